"""Quality metric events: validation with clear errors, and stats (pure parts)."""

from __future__ import annotations

import math

import pytest

from mm.errors import ValidationError
from mm.quality import summarize, validate_event
from mm.rollup import percentile

KNOWN = ("prediction_accuracy", "drift", "inference_time")


def test_a_good_event_comes_back_as_floats():
    event = {"prediction_accuracy": 1, "drift": -0.2, "inference_time": 12.5}
    assert validate_event("Mistral", "v1", event, KNOWN) == {"prediction_accuracy": 1.0, "drift": -0.2,
                                                             "inference_time": 12.5}


@pytest.mark.parametrize("name, version, values, field, words", [
    ("Mistral", "v1", {}, "values", "at least one of"),
    ("Mistral", "v1", {"accuracy": 0.5}, "accuracy", "unknown metric field"),
    ("Mistral", "v1", {"drift": "0.1"}, "drift", "must be a number, not str"),
    ("Mistral", "v1", {"drift": True}, "drift", "must be a number, not bool"),
    ("Mistral", "v1", {"drift": None}, "drift", "must be a number, not NoneType"),
    ("Mistral", "v1", {"drift": math.nan}, "drift", "finite"),
    ("Mistral", "v1", {"inference_time": math.inf}, "inference_time", "finite"),
    ("Mistral", "v1", {"prediction_accuracy": 1.2}, "prediction_accuracy", "outside 0.0..1.0"),
    ("Mistral", "v1", {"inference_time": -1}, "inference_time", "outside"),
    ("", "v1", {"drift": 0.1}, "name", "is not 1-200"),
    ("Mistral", 1, {"drift": 0.1}, "version", "must be a string"),
    ("Mist|ral", "v1", {"drift": 0.1}, "name", "is not 1-200"),
])
def test_bad_events_are_refused_naming_the_field(name, version, values, field, words):
    with pytest.raises(ValidationError) as caught:
        validate_event(name, version, values, KNOWN)

    assert caught.value.field == field
    assert words in caught.value.message


def test_stats_per_field_count_only_events_that_carry_it():
    events = [{"at": i, "id": str(i), "prediction_accuracy": a} for i, a in enumerate((0.2, 0.4, 0.6, 0.8))]
    events.append({"at": 9, "id": "9", "drift": 0.5})

    stats = summarize(events)

    acc = stats["prediction_accuracy"]
    assert acc["count"] == 4 and acc["min"] == 0.2 and acc["max"] == 0.8
    assert acc["mean"] == pytest.approx(0.5)
    assert acc["p50"] == pytest.approx(0.5)
    assert acc["p95"] == pytest.approx(percentile([0.2, 0.4, 0.6, 0.8], 95))
    assert stats["drift"]["count"] == 1


def test_stats_of_no_events_are_empty():
    assert summarize([]) == {}
