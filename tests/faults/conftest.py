"""A ledger of what each fault test measured; `MM_RELIABILITY_OUT=RELIABILITY.md pytest -m faults` writes the table."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from mm import metrics
from tests.procs import wait_for

ROWS: list[Row] = []
TABLE_MARK = "<!-- table -->"


@dataclass
class Row:
    scenario: str
    expectation: str
    submitted: int
    completed: int
    failed: int
    duplicated: int
    recover_s: float | None


def ran_twice(r: redis.Redis, completed: int) -> int:
    """Completions beyond one per completed job: every finished run leaves one "ok" sample.

    A worker writes the sample just after the result, so the count is read once it reaches ``completed``.
    """
    def ok_samples() -> int:
        return sum(1 for s in metrics.raw_samples(r, 0, time.time() + 1) if s["status"] == "ok")

    wait_for(lambda: ok_samples() >= completed, 10, what=f"{completed} job samples")
    return ok_samples() - completed


@pytest.fixture
def ledger():
    """Record one scenario's figures: ledger(scenario, expectation, submitted=, completed=, failed=, ...)."""

    def record(scenario: str, expectation: str, *, submitted: int, completed: int, failed: int,
               duplicated: int = 0, recover_s: float | None = None) -> None:
        ROWS.append(Row(scenario, expectation, submitted, completed, failed, duplicated, recover_s))

    return record


def _order(line: str) -> tuple[int, str]:
    label = line.split("|")[1].strip()
    number = re.match(r"(\d+)", label)
    return (int(number.group(1)) if number else 999, label)


def pytest_sessionfinish(session, exitstatus):
    """Merge this run's rows into the table of ``MM_RELIABILITY_OUT`` (a rerun replaces its scenarios' rows)."""
    out = os.environ.get("MM_RELIABILITY_OUT")
    if not out or not ROWS:
        return
    path = Path(out)
    head, _, table = path.read_text().partition(TABLE_MARK) if path.exists() else ("# Reliability\n\n", "", "")
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| scenario |")}
    for row in ROWS:
        recover = f"{row.recover_s:.1f} s" if row.recover_s is not None else "n/a"
        rows[row.scenario] = (f"| {row.scenario} | {row.expectation} | {row.submitted} | {row.completed} | "
                              f"{row.failed} | {row.duplicated} | {recover} |")
    lines = ["| scenario | expectation | submitted | completed | failed | ran twice | time to recover |",
             "|---|---|---|---|---|---|---|", *sorted(rows.values(), key=_order)]
    path.write_text(head + TABLE_MARK + "\n" + "\n".join(lines) + "\n")
