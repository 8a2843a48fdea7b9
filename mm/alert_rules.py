"""Alert rules (``MM_ALERT_RULES``): a pure parser and the rule type.

    p95_latency_s > 30 for 5m; error_rate > 0.05; queue_wait_p95_s > 60; prediction_accuracy < 0.3

Each rule is ``<metric> <op> <number> [for <duration>]``; rules are separated by ``;`` or new
lines. A job metric is computed per model over the alert window from raw job samples; a quality
metric (``MM_QUALITY_FIELDS``) is the mean of that field per model name and version over the same
window. With ``for``, the condition must hold that long before the alert fires.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mm.errors import ValidationError

# Per model, over the alert window (the names of mm.rollup.summarize's figures, plus jobs and queue_depth).
JOB_METRICS: dict[str, str] = {
    "jobs": "jobs finished",
    "errors": "jobs failed",
    "error_rate": "failed / finished",
    "p50_latency_s": "median submit-to-result seconds of successful jobs",
    "p95_latency_s": "95th percentile submit-to-result seconds of successful jobs",
    "p99_latency_s": "99th percentile submit-to-result seconds of successful jobs",
    "queue_wait_p50_s": "median seconds jobs waited in the queue",
    "queue_wait_p95_s": "95th percentile seconds jobs waited in the queue",
    "queue_wait_p99_s": "99th percentile seconds jobs waited in the queue",
    "tokens_per_s": "mean generation tokens/s of successful jobs",
    "loads": "model loads",
    "unloads": "model unloads",
    "queue_depth": "jobs queued now (all priorities)",
}
OPS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    ">": (operator.gt, "higher than"),
    ">=": (operator.ge, "at least"),
    "<": (operator.lt, "lower than"),
    "<=": (operator.le, "at most"),
    "==": (operator.eq, "equal to"),
    "!=": (operator.ne, "not equal to"),
}
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
RULE_RE = re.compile(
    r"^(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?P<threshold>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
    r"(?:\s+for\s+(?P<duration>\S+))?$"
)
DURATION_RE = re.compile(r"^(?P<number>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)?$")
SETTING = "MM_ALERT_RULES"


@dataclass(frozen=True)
class Rule:
    metric: str
    op: str
    threshold: float
    for_s: float = 0.0

    @property
    def id(self) -> str:
        """A stable identity: the normalized rule text."""
        text = f"{self.metric} {self.op} {self.threshold:g}"
        return f"{text} for {format_duration(self.for_s)}" if self.for_s else text

    def describe(self) -> str:
        """In words, as the alert log lines put it: ``prediction_accuracy lower than 0.3``."""
        text = f"{self.metric} {OPS[self.op][1]} {self.threshold:g}"
        return f"{text} for {format_duration(self.for_s)}" if self.for_s else text

    def holds(self, value: float) -> bool:
        return OPS[self.op][0](value, self.threshold)


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= UNITS[unit] and seconds % UNITS[unit] == 0:
            return f"{int(seconds // UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``1.5h``, ``500ms``, ``1d`` -> seconds."""
    match = DURATION_RE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h")
    return float(match["number"]) * UNITS[match["unit"] or "s"]


def parse_rules(text: str, quality_fields: Iterable[str] = ()) -> list[Rule]:
    """Parse ``MM_ALERT_RULES``; raise :class:`~mm.errors.ValidationError` naming the bad rule."""
    known = dict(JOB_METRICS) | {f: "mean over the window (quality metric)" for f in quality_fields}
    rules: list[Rule] = []
    parts = [p.strip() for p in re.split(r"[;\n]", text or "")]
    for number, part in enumerate((p for p in parts if p), start=1):
        match = RULE_RE.match(part)
        if not match:
            raise ValidationError(SETTING, f"rule {number} {part!r}: expected "
                                           f"'<metric> <op> <number> [for <duration>]' with op one of {' '.join(OPS)}")
        metric = match["metric"]
        if metric not in known:
            raise ValidationError(SETTING, f"rule {number} {part!r}: unknown metric {metric!r} "
                                           f"(known: {', '.join(sorted(known))})")
        for_s = 0.0
        if match["duration"]:
            try:
                for_s = parse_duration(match["duration"])
            except ValueError as exc:
                raise ValidationError(SETTING, f"rule {number} {part!r}: {exc}") from None
        rule = Rule(metric, match["op"], float(match["threshold"]), for_s)
        if any(r.id == rule.id for r in rules):
            raise ValidationError(SETTING, f"rule {number} {part!r} repeats an earlier rule")
        rules.append(rule)
    return rules


def advance(previous: dict | None, holds: bool, at: float, for_s: float) -> tuple[dict | None, str | None]:
    """One evaluation of one rule for one subject: the next state and the transition, if any.

    States are None (ok), ``{"state": "pending", "since"}`` (holds, not yet for ``for_s``) and
    ``{"state": "firing", "since", "fired_at"}``; transitions are "firing" and "cleared".
    """
    if not holds:
        return None, ("cleared" if previous and previous["state"] == "firing" else None)
    if previous is None:
        previous = {"state": "pending", "since": at}
    if previous["state"] == "pending" and at - previous["since"] >= for_s:
        return {"state": "firing", "since": previous["since"], "fired_at": at}, "firing"
    return previous, None
