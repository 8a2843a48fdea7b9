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


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``path``, ``from a import b`` counted as ``a.b``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_the_library_never_imports_the_celery_processes():
    """mm/ is the library; workers/ and beat/ (mm.workers, mm.beat) import it, never the reverse."""
    processes = ("mm.workers", "mm.beat", "workers", "beat")

    offenders = [f"{path.relative_to(REPO)}:{line} {module}"
                 for path in (REPO / "mm").rglob("*.py") for line, module in imported_modules(path)
                 if any(module == p or module.startswith(p + ".") for p in processes)]

    assert offenders == []
