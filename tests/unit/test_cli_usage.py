"""mm enqueue refuses arguments that name no job before it submits anything; mm up finds Flower a port."""

from __future__ import annotations

import socket

import click
import pytest

from mm.cli.enqueue import _check_usage
from mm.cli.up import _free_port

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


def test_mm_up_starts_flower_on_its_port_or_on_a_free_one_when_that_is_taken():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        assert _free_port(taken) != taken  # another Flower or mm up holds it
    assert _free_port(taken) == taken
