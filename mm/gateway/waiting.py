"""Waiting for jobs without blocking the event loop: result polling and token stream relaying."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import redis
from celery import states
from celery.result import AsyncResult

from mm import client, keys, replies, store
from mm.app import app
from mm.errors import JobCancelled, JobExpired, JobFailed, JobLost

POLL_START_S = 0.02
POLL_MAX_S = 0.25


def result_state(job_id: str) -> tuple[str, Any]:
    """One look at a job (blocking): ("ok", result), ("failed", JobFailed), ("lost", None) or ("waiting", None).

    A failure carries the runtime's HTTP status when the runtime refused the job (``JobFailed.status``).
    """
    result: AsyncResult[Any] = AsyncResult(job_id, app=app)
    state: str = result.state  # celery-types leaves REVOKED out of the states it lists
    if state == states.SUCCESS:
        return "ok", result.result
    if state in states.EXCEPTION_STATES:
        reason, status, ended = store.connect().hmget(keys.job(job_id), "error", "error_status", "status")
        message = replies.text(reason) if reason else f"{type(result.result).__name__}: {result.result}"
        if state == states.REVOKED:  # cancelled
            return "failed", JobCancelled(message)
        if ended == b"expired":  # not started by its deadline
            return "failed", JobExpired(message)
        return "failed", JobFailed(message, status=int(status) if status else None)
    if not store.connect().exists(keys.job(job_id)):
        return "lost", None
    return "waiting", None


async def wait_result(run: Callable[..., Any], job_id: str, timeout: float,
                      gone: Callable[[], bool] = lambda: False) -> dict[str, Any] | None:
    """The job's result, polling with backoff (through a Redis restart); None if ``timeout`` passed or the
    client is ``gone``.

    Raises:
        JobFailed: the job ended FAILED (the message is its reason, ``status`` the runtime's HTTP status).
        JobLost: Redis no longer has the job.
    """
    deadline = time.monotonic() + timeout
    interval = POLL_START_S
    while True:
        try:
            state, value = await run(result_state, job_id)
        except redis.ConnectionError:  # Redis restarting or failing over: the job goes on, keep waiting
            state, value = "waiting", None
        if state == "ok":
            return value
        if state == "failed":
            raise value
        if state == "lost":
            raise JobLost(f"job {job_id} was lost: Redis no longer has it; submit it again")
        if gone() or time.monotonic() >= deadline:
            return None
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 1.5, POLL_MAX_S)


def streaming_supported() -> bool:
    """Whether this mm's client can stream tokens (``submit(stream=True)`` and ``Job.stream``)."""
    return "stream" in inspect.signature(client.submit).parameters and hasattr(client.Job, "stream")


Gone = Callable[[Callable[[], None]], None]  # registers what to call when the client hangs up


async def in_thread(make: Callable[[], Iterator[Any]], executor: Any,
                    when_gone: Gone | None = None) -> AsyncGenerator[Any, None]:
    """Iterate a blocking generator on ``executor``, handing each item to the event loop.

    Closing this iterator (the client hung up) stops the generator at its next item; with
    ``when_gone``, the iteration also ends as soon as the client hangs up, between two items.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()
    if when_gone is not None:
        when_gone(lambda: queue.put_nowait(("end", None)))

    def put(kind: str, item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, item))
        except RuntimeError:  # the loop is closed: the gateway is shutting down
            stop.set()

    def pump() -> None:
        try:
            for item in make():
                if stop.is_set():
                    return
                put("item", item)
            put("end", None)
        except BaseException as exc:  # JobFailed, JobLost, ModelOpError, TimeoutError, Redis errors
            put("error", exc)

    loop.run_in_executor(executor, pump)
    try:
        while True:
            kind, item = await queue.get()
            if kind == "item":
                yield item
            elif kind == "end":
                return
            else:
                raise item
    finally:
        stop.set()


def relay(job: Any, executor: Any, timeout: float | None,
          when_gone: Gone | None = None) -> AsyncGenerator[dict[str, Any], None]:
    """Yield the job's Ollama-shaped chunks as the worker publishes them (``Job.stream``, in a thread),
    until the job ends or the client hangs up (``when_gone``)."""
    return in_thread(lambda: job.stream(timeout=timeout), executor, when_gone)
