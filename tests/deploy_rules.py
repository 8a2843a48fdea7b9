"""What a deployment file (docker-compose.yml, deploy/k8s) may run and set: the process commands the
README and docs/ document, mm subcommands with options mm's CLI accepts, and real ``MM_*`` settings.

Shared by tests/unit/test_compose.py, tests/unit/test_k8s.py and tests/integration/test_k8s_build.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import click
import yaml

from mm.cli import COMMANDS
from mm.settings import Settings, env_name

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SETTINGS = frozenset(env_name(f.name) for f in dataclasses.fields(Settings))

# Options of Celery's commands that take a value (the rest are flags), and those a deployment may add
# to a documented command line: the log level, Flower's port and address, gossip off.
CELERY_VALUED = {"-A", "-Q", "-c", "-P", "-n", "-l", "--loglevel", "--port", "--address", "--basic-auth",
                 "--queue", "--kwargs", "--args"}
CELERY_EXTRAS = {"-l", "--loglevel", "--port", "--address", "--without-gossip"}


def documented_celery_lines() -> list[str]:
    """Every ``celery -A mm.app ...`` command line in the README and docs/ (inline code and code blocks)."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        found += [" ".join(span.split()) for span in re.findall(r"`(celery -A mm\.app [^`]+)`", text)]
        found += [line.strip() for line in text.splitlines() if line.strip().startswith("celery -A mm.app ")]
    return found


def celery_shape(argv: list[str]) -> tuple[str, frozenset[tuple[str, str]]]:
    """A celery command line reduced to what makes it one of mm's processes: its subcommand and its
    options, with node names, worker numbers, slot counts and credentials as placeholders and the
    allowed extras (``CELERY_EXTRAS``) left out."""
    assert argv[:3] == ["celery", "-A", "mm.app"], argv
    options: set[tuple[str, str]] = set()
    rest = argv[4:]
    while rest:
        token = rest.pop(0)
        if token.startswith("-") and "=" in token:
            name, value = token.split("=", 1)
        elif token in CELERY_VALUED:
            name, value = token, rest.pop(0)
        else:
            name, value = token, ""
        if name not in CELERY_EXTRAS:
            options.add((name, _placeholder(name, value)))
    return argv[3], frozenset(options)


def _placeholder(option: str, value: str) -> str:
    if option == "-Q":
        return ",".join(sorted(re.sub(r"^mm\.node\..+$", "mm.node.<node>", q) for q in value.split(",")))
    if option == "-n":  # <role>@<node>: gpu-broker, or a model-worker model or model-N
        return re.sub(r"-\d+$", "", value.split("@")[0]) + "@<node>"
    if option == "-c":
        return value if value == "1" else "<slots>"
    if option == "--basic-auth":
        return "<user:pass>" if value else ""
    return value


def documented_celery(argv: list[str]) -> bool:
    """Whether ``argv`` is one of the documented Celery command lines (up to placeholders and extras)."""
    return celery_shape(argv) in {celery_shape(shlex.split(line)) for line in documented_celery_lines()}


def mm_command_problem(argv: list[str]) -> str | None:
    """Why ``mm SUBCOMMAND ...`` is not a command mm's CLI accepts as written, or ``None``."""
    if len(argv) < 2 or argv[1] not in COMMANDS:
        return f"{argv[1:2]} is not an mm subcommand ({sorted(COMMANDS)})"
    module, attr = COMMANDS[argv[1]].split(":")
    command: click.Command = getattr(importlib.import_module(module), attr)
    try:
        command.make_context(f"mm {argv[1]}", list(argv[2:]))
    except click.ClickException as exc:
        return f"{shlex.join(argv)}: {exc.format_message()}"
    if not any(f"mm {argv[1]}" in doc.read_text() for doc in DOCS):
        return f"mm {argv[1]} is documented nowhere in the README or docs/"
    return None


def command_problem(argv: list[str]) -> str | None:
    """Why a process or probe command line is not a documented mm or Celery command, or ``None``.

    ``sh -c SCRIPT`` is checked by its first command when that is ``mm`` or ``celery`` (environment
    references stay as words); other programs (redis-server, ollama, python) are not mm's to check.
    """
    if argv[:2] == ["sh", "-c"]:
        words = shlex.split(argv[2].split("|")[0])
        return command_problem(words) if words and words[0] in ("mm", "celery") else None
    if argv[0] == "mm":
        return mm_command_problem(argv)
    if argv[0] == "celery":
        return None if documented_celery(argv) else f"{shlex.join(argv)} is not a documented celery command"
    return None


def unknown_settings(names: list[str]) -> list[str]:
    """The ``MM_*`` names among ``names`` that no setting in mm/settings.py reads."""
    return [name for name in names if name.startswith("MM_") and name not in SETTINGS]


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
