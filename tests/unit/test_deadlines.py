"""Job deadlines without services: what validation accepts, and when a job is overdue."""

import math

import pytest

from mm import deadlines
from mm.errors import ValidationError
from mm.gateway.base import ApiError
from mm.gateway.ollama_shape import deadline_from
from mm.request_fields import check_deadline
from mm.settings import Settings
from mm.validation import validate

KNOWN = frozenset({"m:1b"})


@pytest.mark.parametrize("value", [0, -1, -0.5, True, False, "10", math.nan, math.inf, [5], {"s": 5}])
def test_a_deadline_that_is_not_a_positive_number_of_seconds_is_refused(value):
    with pytest.raises(ValidationError) as refused:
        validate("m:1b", known_models=KNOWN, settings=Settings(), prompt="hi", deadline_s=value)

    assert refused.value.field == "deadline_s"
    assert "seconds" in refused.value.message


def test_a_deadline_travels_in_the_payload_and_no_deadline_adds_nothing():
    with_deadline = validate("m:1b", known_models=KNOWN, settings=Settings(), prompt="hi", deadline_s=30)
    without = validate("m:1b", known_models=KNOWN, settings=Settings(), prompt="hi")

    assert with_deadline.payload()["deadline_s"] == 30.0
    assert "deadline_s" not in without.payload()
    assert check_deadline(0.25) == 0.25


def test_a_job_is_overdue_only_once_its_deadline_has_passed():
    request = {"deadline_s": 10.0}

    assert deadlines.overdue(request, 1000.0, 1010.0) is None
    late = deadlines.overdue(request, 1000.0, 1012.5)
    assert late == "expired: not started within deadline_s=10 (waited 12.5 s); it never ran"
    assert deadlines.overdue({}, 1000.0, 1e9) is None


@pytest.mark.parametrize("header, expected", [(None, None), ("", None), (" 2.5 ", 2.5), ("30", 30.0)])
def test_the_deadline_header_gives_seconds(header, expected):
    assert deadline_from(header) == expected


@pytest.mark.parametrize("header", ["soon", "0", "-3", "nan", "inf"])
def test_a_bad_deadline_header_is_a_400_naming_the_header(header):
    with pytest.raises((ApiError, ValidationError)) as refused:
        deadline_from(header)

    assert refused.value.field == "X-MM-Deadline"
