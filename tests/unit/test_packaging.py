"""mm's code reaches its Celery processes and config only under the ``mm`` name.

Installed, ``workers/`` and ``beat/`` are ``mm.workers`` and ``mm.beat`` and there is no top-level
``celeryconfig``; in the repository the top-level names also resolve (the checkout is on the path),
so an import by the short name works here, fails in an installed copy, and loads a second copy of
the module whose globals (the node agent, the bindings) the first never sees.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHORT_NAMES = {"workers", "beat", "celeryconfig"}


def short_name_imports(path: Path) -> list[str]:
    """``file:line module`` for each import of a short name in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        found += [f"{path.relative_to(REPO)}:{node.lineno} {m}" for m in modules if m.split(".")[0] in SHORT_NAMES]
    return found


def test_no_module_imports_workers_beat_or_celeryconfig_by_its_short_name():
    sources = [p for d in ("mm", "workers", "beat", "bench", "tests") for p in (REPO / d).rglob("*.py")]

    offenders = [hit for path in sources for hit in short_name_imports(path)]

    assert offenders == []


def test_the_app_names_its_tasks_bootstep_and_config_under_mm():
    app_source = (REPO / "mm" / "app.py").read_text()

    for short in ('"workers.', '"beat.', '"celeryconfig"'):
        assert short not in app_source
