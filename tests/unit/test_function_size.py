"""No function outside ``bench/`` is over 60 lines: one that is does several jobs and is split."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 60


def long_functions(path: Path) -> list[str]:
    """``file:line name (N lines)`` for each function in ``path`` over ``MAX_LINES``, decorators not counted."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_outside_bench_is_over_60_lines():
    sources = [p for d in ("mm", "workers", "beat", "tests") for p in (REPO / d).rglob("*.py")]

    offenders = [hit for path in sources for hit in long_functions(path)]

    assert offenders == []
