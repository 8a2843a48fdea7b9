"""Cancelling, pure parts: a stopped runtime call gives up between two chunks and closes the stream
(and one past its timeout fails as timed out); a kombu message's job id is read as queued and as kept
unacked."""

import json
import threading
import time

import httpx
import ollama
import pytest

from mm.cancel import message_id, model_lists
from mm.errors import JobCancelled, JobFailed
from mm.gateway.base import status_for
from mm.gateway.openai_shape import openai_error
from mm.keys import priority_list
from mm.workers.inference import _relay, failure


def chunks_until(stop: threading.Event, stop_after: int, seen: list[int]):
    """Chat chunks that set ``stop`` after ``stop_after`` of them, counting how many were taken."""
    try:
        for i in range(100):
            seen.append(i)
            if i == stop_after:
                stop.set()
            yield ollama.ChatResponse(model="m", message={"role": "assistant", "content": f"t{i} "})
    finally:
        seen.append(-1)  # closed


def test_a_stopped_call_gives_up_at_the_next_chunk_and_publishes_nothing_after():
    stop, seen, published = threading.Event(), [], []
    chunks = chunks_until(stop, 2, seen)

    with pytest.raises(JobCancelled) as caught:
        _relay(chunks, published.append, "chat", stop)
    chunks.close()

    assert str(caught.value).startswith("cancelled: ") and isinstance(caught.value, JobFailed)
    assert len(published) == 2 and seen == [0, 1, 2, -1]  # the chunk that came after the stop is dropped


def test_an_unstopped_call_relays_the_whole_answer():
    stop = threading.Event()
    chunks = [ollama.GenerateResponse(model="m", response=w) for w in ("a", "b")]
    chunks.append(ollama.GenerateResponse(model="m", response="", done=True, eval_count=2))

    final = _relay(iter(chunks), None, "generate", stop)

    assert final["response"] == "ab" and final["done"] and final["eval_count"] == 2


def test_a_messages_job_id_is_read_as_queued_and_as_unacked():
    queued = json.dumps({"body": "x", "headers": {"id": "job-1", "task": "mm.infer"}, "properties": {}})
    unacked = json.dumps([json.loads(queued), "", "mm.model.m"])

    assert message_id(queued) == "job-1"
    assert message_id(unacked, unacked=True) == "job-1"
    assert message_id("not json") is None and message_id(json.dumps({"headers": {}})) is None


def test_a_models_queue_is_looked_for_on_every_priority_list():
    lists = model_lists(["m:1b"])

    assert lists[0] == priority_list("m:1b", 0) and len(set(lists)) == 4


def test_a_call_still_streaming_past_its_timeout_fails_as_a_timed_out_call():
    chunks = iter([ollama.GenerateResponse(model="m", response="a")])

    with pytest.raises(httpx.ReadTimeout) as caught:
        _relay(chunks, None, "generate", threading.Event(), deadline=time.monotonic() - 1)

    failed = failure(caught.value, 600)
    assert failed.status == 504 and "timed out after 600s" in str(failed)


def test_a_cancelled_job_is_a_409_on_both_apis():
    cancelled = JobCancelled("cancelled: by request")

    assert cancelled.status == 409 and isinstance(cancelled, JobFailed)
    assert openai_error(cancelled).status == 409 and openai_error(cancelled).code == "job_cancelled"
    assert status_for(cancelled)[0] == 409
