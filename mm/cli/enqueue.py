"""``mm enqueue``: submit one job or a test load (--batch, --random and --spam modes)."""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click
import redis

from mm import events, registry, store
from mm.cli.follow import Follower, seconds
from mm.errors import JobFailed, ValidationError
from mm.settings import get as get_settings

if TYPE_CHECKING:
    from mm.client import Job

# A job to submit: (model, prompt, priority).
Planned = tuple[str, str | None, str]

DEFAULT_NUM_PREDICT = 64  # the README's examples finish in seconds on a 2-core CPU
EXIT_FAILED = 1
EXIT_STILL_RUNNING = 3  # the CLI stopped waiting, the job goes on (click exits 2 on usage errors)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
UNFINISHED = ("pending", "queued", "running")

BATCH_PROMPTS = [
    "Explain what a GPU does in one sentence.",
    "Write a haiku about queues.",
    "List three prime numbers.",
    "What is the capital of France?",
]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _plan_jobs(model: str | None, prompt: str | None, batch: bool, random_n: int, spam_n: int, priority: str,
               known: Collection[str], rng: random.Random) -> list[Planned]:
    if batch:
        assert model  # _check_usage: --batch names its model
        return [(model, p, priority) for p in BATCH_PROMPTS]
    count = random_n or spam_n
    if count:
        models = [model] if model else sorted(known)
        return [(rng.choice(models), rng.choice(BATCH_PROMPTS), rng.choice(["high", "normal", "low"]))
                for _ in range(count)]
    assert model  # _check_usage: a single job names its model
    return [(model, prompt, priority)]


def _default_num_predict(r: redis.Redis, model: str) -> int:
    """DEFAULT_NUM_PREDICT, or the model's num_predict ceiling where an operator set it lower."""
    entry = registry.get(r, model)
    ceiling = (entry.max_num_predict if entry else 0) or get_settings().max_num_predict
    return min(DEFAULT_NUM_PREDICT, ceiling) if ceiling > 0 else DEFAULT_NUM_PREDICT


def _submit(r: redis.Redis, model: str, prompt: str | None, kind: str, priority: str, num_predict: int | None,
            stream: bool, deadline_s: float | None = None) -> Job:
    import mm

    if kind == "embed":
        return mm.submit(model, prompt, kind="embed", priority=priority, deadline_s=deadline_s)
    options = {"num_predict": _default_num_predict(r, model) if num_predict is None else num_predict}
    if kind == "chat":
        return mm.submit(model, kind="chat", messages=[{"role": "user", "content": prompt}], priority=priority,
                         options=options, stream=stream, deadline_s=deadline_s)
    return mm.submit(model, prompt, priority=priority, options=options, stream=stream, deadline_s=deadline_s)


def _still_running(job_id: str, status: str, waited_s: float) -> str:
    state = "still queued" if status in ("queued", "pending") else "still running"
    return (f"{state} {job_id}: stopped waiting after {seconds(waited_s)}; the job goes on. "
            f"Follow it with: mm jobs status {job_id}")


@click.command()
@click.argument("model", required=False)
@click.argument("prompt", required=False)
@click.option("--priority", "-p", type=click.Choice(["high", "normal", "low"]), default="normal", show_default=True)
@click.option("--kind", type=click.Choice(["generate", "chat", "embed"]), default="generate", show_default=True)
@click.option("--num-predict", type=int, default=None,
              help=f"Most tokens each generate or chat job may produce [default: {DEFAULT_NUM_PREDICT}, "
                   "or the model's ceiling if lower].")
@click.option("--wait", is_flag=True,
              help="Wait for the job: its state and tokens as they come on stderr/stdout, then its timings.")
@click.option("--stream/--no-stream", default=True, show_default=True,
              help="With --wait, print a generate or chat job's tokens as they are generated.")
@click.option("--batch", is_flag=True, help="Submit the predefined batch of 4 prompts to MODEL.")
@click.option("--random", "random_n", type=int, default=0, metavar="N",
              help="Submit N jobs with random prompts, priorities and (without MODEL) models.")
@click.option("--spam", "spam_n", type=int, default=0, metavar="N", help="Like --random N, without checking results.")
@click.option("--delay", type=float, default=0.0, metavar="S", help="Seconds between submissions.")
@click.option("--no-check", is_flag=True, help="Do not wait for results.")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help=f"Seconds to wait for results; jobs still running then go on (exit code {EXIT_STILL_RUNNING}).")
@click.option("--seed", type=int, default=None, help="Random seed for --random/--spam.")
@click.option("--deadline", "deadline_s", type=float, default=None, metavar="SECONDS",
              help="Each job must start within SECONDS of its submission, else it ends expired without running.")
def enqueue(model: str | None, prompt: str | None, priority: str, kind: str, num_predict: int | None, wait: bool,
            stream: bool, batch: bool, random_n: int, spam_n: int, delay: float, no_check: bool, timeout: float,
            seed: int | None, deadline_s: float | None) -> None:
    """Submit PROMPT to MODEL (or a test load) and, with --wait or a test load, report the results.

    Exit status: 0 when every job completed, 1 when one failed (or expired), 3 when one was still queued or
    running when the CLI stopped waiting (--timeout), 130 on Ctrl-C; such jobs go on.
    """
    r = store.connect()
    known = registry.names(r)
    _check_usage(model, prompt, batch, random_n, spam_n, known)
    planned = _plan_jobs(model, prompt, batch, random_n, spam_n, priority, known, random.Random(seed))
    single = len(planned) == 1 and not batch
    check = not (no_check or spam_n) and (wait or not single)
    streaming = single and check and stream and kind != "embed"
    started = time.time()
    jobs = _submit_all(r, planned, kind, num_predict, streaming, delay, single, deadline_s)
    if not check:
        for job in jobs:
            click.echo(job.id)
        return
    status = _report(r, _wait_all(jobs, single, streaming, timeout), single, started)
    if status:
        sys.exit(status)


def _check_usage(model: str | None, prompt: str | None, batch: bool, random_n: int, spam_n: int,
                 known: Collection[str]) -> None:
    """Refuse arguments that name no job to submit."""
    if (batch or not (random_n or spam_n)) and not model:  # --batch goes to MODEL, with --random too
        raise click.UsageError("MODEL is required (known: " + ", ".join(sorted(known)) + ")")
    if not (batch or random_n or spam_n) and prompt is None:
        raise click.UsageError("PROMPT is required for a single job")
    if not known and (random_n or spam_n) and not model:
        raise click.ClickException("no models registered yet: is a gpu-broker running?")


def _submit_all(r: redis.Redis, planned: list[Planned], kind: str, num_predict: int | None, streaming: bool,
                delay: float, single: bool, deadline_s: float | None = None) -> list[Job]:
    """Submit the planned jobs, ``delay`` seconds apart; a refused one ends the command."""
    jobs = []
    try:
        with click.progressbar(planned, label="submitting", file=sys.stderr, hidden=single) as bar:
            for job_model, job_prompt, job_priority in bar:
                jobs.append(_submit(r, job_model, job_prompt, kind, job_priority, num_predict, streaming, deadline_s))
                if delay:
                    time.sleep(delay)
    except ValidationError as exc:
        raise click.ClickException(f"refused before enqueue: {exc}") from None
    return jobs


@dataclass
class _Waited:
    """What waiting for the jobs found."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (job id, reason)
    unfinished: list[tuple[str, str]] = field(default_factory=list)  # (job id, status)
    interrupted: bool = False
    waited_s: float = 0.0


def _wait_all(jobs: list[Job], single: bool, streaming: bool, timeout: float) -> _Waited:
    """Wait for each job in turn until ``timeout``, following a single job's state and tokens."""
    waited = _Waited()
    waiting_since = time.monotonic()
    deadline = waiting_since + timeout
    ended = 0  # jobs, in order, whose wait is over
    try:
        with click.progressbar(jobs, label="waiting", file=sys.stderr, hidden=single) as bar:
            for job in bar:
                try:
                    if single:
                        result = Follower(job, deadline).wait(stream=streaming)
                    else:
                        result = job.get(timeout=max(0.1, deadline - time.monotonic()))
                    waited.outputs.append(result)
                    record = job.record()
                    waited.latencies.append(float(record["completed_at"]) - float(record["submitted_at"]))
                except JobFailed as exc:
                    waited.failures.append((job.id, str(exc)))
                except TimeoutError:
                    waited.unfinished.append((job.id, job.status()))
                ended += 1
    except KeyboardInterrupt:  # Ctrl-C stops the waiting, not the jobs
        waited.interrupted = True
        click.echo("", err=True)
        waited.unfinished += [(job.id, status) for job in jobs[ended:] if (status := job.status()) in UNFINISHED]
    waited.waited_s = time.monotonic() - waiting_since
    return waited


def _report(r: redis.Redis, waited: _Waited, single: bool, started: float) -> int:
    """Print the jobs' outcome and return the exit status it calls for."""
    outputs, latencies, failures, unfinished = waited.outputs, waited.latencies, waited.failures, waited.unfinished
    if single and outputs:
        click.echo(json.dumps(outputs[0]["timings"]), err=True)
    loads = sum(1 for e in events.recent(r, 10_000) if e["kind"] == "load" and e["at"] >= started)
    click.echo(
        f"completed {len(outputs)}, failed {len(failures)}, "
        f"p50 {_percentile(latencies, 0.5):.2f}s, p95 {_percentile(latencies, 0.95):.2f}s, "
        f"mean {statistics.fmean(latencies) if latencies else 0:.2f}s, loads {loads}"
        + (f", still running {len(unfinished)}" if unfinished else ""),
        err=single,
    )
    for job_id, reason in failures:
        click.echo(f"failed {job_id}: {reason}", err=True)
    for job_id, status in unfinished:
        click.echo(_still_running(job_id, status, waited.waited_s), err=True)
    if waited.interrupted:
        return EXIT_INTERRUPTED
    if failures:
        return EXIT_FAILED
    if unfinished:
        return EXIT_STILL_RUNNING
    return 0
