"""The alert rule parser and the pending/firing/cleared state machine (pure)."""

from __future__ import annotations

import pytest

from mm.alert_rules import Rule, advance, parse_duration, parse_rules
from mm.errors import ValidationError

QUALITY = ("prediction_accuracy", "drift", "inference_time")


def test_the_documented_example_parses():
    rules = parse_rules("p95_latency_s > 30 for 5m; error_rate > 0.05; queue_wait_p95_s > 60; "
                        "prediction_accuracy < 0.3", QUALITY)

    assert rules == [
        Rule("p95_latency_s", ">", 30.0, 300.0),
        Rule("error_rate", ">", 0.05),
        Rule("queue_wait_p95_s", ">", 60.0),
        Rule("prediction_accuracy", "<", 0.3),
    ]
    assert rules[0].id == "p95_latency_s > 30 for 5m"
    assert rules[3].describe() == "prediction_accuracy lower than 0.3"


def test_spacing_newlines_and_every_operator_parse():
    rules = parse_rules("jobs>=1\n errors<=2 ;loads==0; unloads!=3;tokens_per_s<1e3 for 90", ())

    assert [(r.metric, r.op, r.threshold, r.for_s) for r in rules] == [
        ("jobs", ">=", 1.0, 0.0), ("errors", "<=", 2.0, 0.0), ("loads", "==", 0.0, 0.0),
        ("unloads", "!=", 3.0, 0.0), ("tokens_per_s", "<", 1000.0, 90.0),
    ]


def test_empty_text_means_no_rules():
    assert parse_rules("", QUALITY) == []
    assert parse_rules(" ; ;\n", QUALITY) == []


@pytest.mark.parametrize("text, words", [
    ("p95_latency_s >> 30", "rule 1 'p95_latency_s >> 30': expected"),
    ("error_rate > 0.05; p95_latency > 30", "rule 2 'p95_latency > 30': unknown metric 'p95_latency'"),
    ("error_rate > high", "expected '<metric> <op> <number>"),
    ("error_rate > 0.05 for ever", "'ever' is not a duration"),
    ("error_rate > 0.05 for", "expected"),
    ("prediction_accuracy < 0.3", "unknown metric 'prediction_accuracy'"),
    ("error_rate > 0.1; error_rate > 0.1", "repeats an earlier rule"),
])
def test_bad_rules_get_errors_that_name_the_rule(text, words):
    quality = () if "prediction" in text else QUALITY
    with pytest.raises(ValidationError) as caught:
        parse_rules(text, quality)

    assert caught.value.field == "MM_ALERT_RULES"
    assert words in caught.value.message


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("5m", 300), ("1.5h", 5400), ("500ms", 0.5),
                                           ("1d", 86400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_rule_comparison():
    assert Rule("error_rate", ">", 0.05).holds(0.06)
    assert not Rule("error_rate", ">", 0.05).holds(0.05)
    assert Rule("error_rate", ">=", 0.05).holds(0.05)


def test_without_for_an_alert_fires_at_once_and_clears_once():
    state, change = advance(None, True, 100.0, 0.0)
    assert change == "firing" and state["state"] == "firing"

    state, change = advance(state, True, 160.0, 0.0)
    assert change is None and state["fired_at"] == 100.0

    state, change = advance(state, False, 220.0, 0.0)
    assert (state, change) == (None, "cleared")

    assert advance(None, False, 280.0, 0.0) == (None, None)


def test_with_for_the_condition_must_hold_that_long_before_firing():
    state, change = advance(None, True, 0.0, 300.0)
    assert change is None and state == {"state": "pending", "since": 0.0}

    state, change = advance(state, True, 299.0, 300.0)
    assert change is None and state["state"] == "pending"

    state, change = advance(state, True, 300.0, 300.0)
    assert change == "firing" and state["since"] == 0.0


def test_a_pending_condition_that_ends_never_fires_nor_clears():
    state, _ = advance(None, True, 0.0, 300.0)

    assert advance(state, False, 60.0, 300.0) == (None, None)
