"""Follow one job from the CLI: its state changes on stderr, its tokens (or output) on stdout."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from mm.client import Job


POLL_S = 0.25  # how often the state of a queued job is read
STORE_GRACE_S = 5.0


def seconds(value: float) -> str:
    """A duration as people read it: ``72.3 s``."""
    return f"{value:.1f} s"


def output_text(result: dict[str, Any]) -> str:
    """What a finished job prints on stdout: the text it generated, or its embeddings as JSON."""
    if "response" in result:
        return result["response"]
    if "message" in result:
        return result["message"].get("content", "")
    return json.dumps(result.get("embeddings"))


def _chunk_text(chunk: dict[str, Any]) -> str:
    return chunk.get("response") or (chunk.get("message") or {}).get("content") or ""


def _completion(result: dict[str, Any]) -> str:
    timings = result.get("timings", {})
    tokens = timings.get("eval_tokens", 0)
    produced = f"{tokens} tokens in {seconds(timings.get('eval_s', 0.0))}, " if tokens else ""
    return (f"complete on node {result.get('node', '?')}: {produced}"
            f"{seconds(timings.get('queue_wait_s', 0.0))} in the queue")


class Follower:
    """Waits for one job and tells what happens to it as it happens.

    State lines (``queued``, ``running on node …``) go to ``err``; the job's tokens, as they are
    generated, or its whole output at the end, go to ``out``, so ``out`` holds only the output.
    """

    def __init__(self, job: Job, deadline: float, *, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.job = job
        self.deadline = deadline  # time.monotonic() after which the CLI stops waiting
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.started = time.monotonic()
        self._said: tuple[str, str] | None = None

    def say(self, text: str) -> None:
        """One progress line on stderr, stamped with the seconds since the job was submitted."""
        self.err.write(f"[{seconds(time.monotonic() - self.started):>8}] {text}\n")
        self.err.flush()

    def _show_state(self, record: dict[str, Any]) -> str:
        status = record.get("status", "pending")
        if self._said is None:
            self.say(f"job {self.job.id} sent to {record.get('model', '?')} "
                     f"(priority {record.get('priority', '?')})")
        where = record.get("node", "") if status == "running" else ""
        if (status, where) != self._said:
            self._said = (status, where)
            if status == "queued":
                self.say("queued")
            elif status == "running":
                worker = record.get("worker")
                self.say(f"running on node {where}" + (f" ({worker})" if worker else ""))
        return status

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"job {self.job.id} has not ended")
        return left

    def wait(self, stream: bool) -> dict[str, Any]:
        """Wait until the job ends; print its state changes and its output (with ``stream``, token by token).

        Returns the job's result. Raises ``JobFailed`` (or ``JobLost``) if it failed, and
        ``TimeoutError`` if the deadline passed first; the job then goes on without the CLI.
        """
        while self._show_state(self.job.record()) == "queued":
            time.sleep(min(POLL_S, self._left()))
        wrote = self._stream() if stream else False
        # After the last chunk the worker is only storing the result: a few seconds' grace.
        result = self.job.get(timeout=max(self.deadline - time.monotonic(), STORE_GRACE_S if wrote else 0.001))
        if not wrote:
            self.out.write(output_text(result) + "\n")
            self.out.flush()
        self.say(_completion(result))
        return result

    def _stream(self) -> bool:
        """Print the job's tokens as they come; return whether any came."""
        wrote = False
        try:
            for chunk in self.job.stream(timeout=self._left()):
                text = _chunk_text(chunk)
                if text:
                    if not wrote:
                        self._show_state(self.job.record())  # "running" before its first token
                    self.out.write(text)
                    self.out.flush()
                    wrote = True
        finally:
            if wrote:
                self.out.write("\n")
                self.out.flush()
        return wrote
