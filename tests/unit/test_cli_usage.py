"""mm enqueue refuses arguments that name no job before it submits anything."""

from __future__ import annotations

import click
import pytest

from mm.cli.enqueue import _check_usage

KNOWN = ["sim-a:1b"]


@pytest.mark.parametrize("model, prompt, batch, random_n, spam_n, message", [
    (None, None, True, 3, 0, "MODEL is required"),  # --batch --random N goes to MODEL
    (None, None, True, 0, 0, "MODEL is required"),
    (None, "hi", False, 0, 0, "MODEL is required"),
    ("sim-a:1b", None, False, 0, 0, "PROMPT is required"),
])
def test_arguments_naming_no_job_are_a_usage_error(model, prompt, batch, random_n, spam_n, message):
    with pytest.raises(click.UsageError, match=message):
        _check_usage(model, prompt, batch, random_n, spam_n, KNOWN)


def test_random_jobs_need_no_model_when_models_are_registered():
    _check_usage(None, None, False, 3, 0, KNOWN)
