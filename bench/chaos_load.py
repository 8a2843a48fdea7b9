"""The chaos soak's steady load and its ledger of every accepted job.

Three kinds of client, across the four models: ``mm.submit`` (then ``Job.get``), the gateway's
Ollama API (``/api/generate`` and ``/api/chat``, streaming and not, with httpx) and a stock Celery
client's ``send_task`` (then ``AsyncResult.get``). A job is *accepted* when ``submit`` returned an
id, ``send_task`` returned, or the gateway answered 200 (a streamed answer: its first line). Every
prompt is unique, so each job's runtime call has its own body digest in the runtime's log.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.chaos_cluster import MODELS

VIAS = ("submit", "celery", "gateway-generate", "gateway-generate-stream", "gateway-chat", "gateway-chat-stream")
WAIT_S = 600.0  # how long one client waits for its job before leaving it to the final reading
GATEWAY_TIMEOUT_S = 120.0  # an HTTP client's timeout (a job left without its answer is read at the end)


@dataclass
class Entry:
    """One accepted job: how it came in, what its client saw, and how it ended."""

    key: str
    via: str
    model: str
    kind: str  # generate | chat
    text: str  # the prompt, or the chat message's content
    options: dict[str, Any]
    accepted_at: float
    job_id: str = ""
    outcome: str = ""  # complete | failed | cancelled | lost | stuck ("" while not known)
    reason: str = ""
    seen: str | None = None  # the answer's text as its client saw it
    ended_at: float = 0.0  # when its client saw it end (0: it never did)


@dataclass
class Ledger:
    entries: list[Entry] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)  # via -> submissions not accepted (and why, in errors)
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: Entry) -> Entry:
        with self.lock:
            self.entries.append(entry)
        return entry

    def refuse(self, via: str, exc: BaseException | str) -> None:
        reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {str(exc)[:80]}"
        with self.lock:
            self.refused[via] = self.refused.get(via, 0) + 1
            self.errors[reason] = self.errors.get(reason, 0) + 1


def answer_text(kind: str, result: dict[str, Any]) -> str:
    """The generated text of a job's result (or of an Ollama answer)."""
    if kind == "chat":
        return str((result.get("message") or {}).get("content", ""))
    return str(result.get("response", ""))


@dataclass
class Load:
    """Sends ``rate`` jobs a second, spread over the clients, until stopped."""

    ledger: Ledger
    gateway_url: str
    redis_url: str
    rng: random.Random
    rate: float
    seed: int
    _stop: threading.Event = field(default_factory=threading.Event)
    _closed: threading.Event = field(default_factory=threading.Event)
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(48, thread_name_prefix="chaos-client"))
    _count: int = 0
    _futures: list[futures.Future[None]] = field(default_factory=list)
    _stock: Any = None

    def run(self) -> None:
        from celery import Celery

        self._stock = Celery("plain", broker=self.redis_url, backend=self.redis_url)
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += self.rng.expovariate(self.rate)
            self._stop.wait(max(0.0, next_at - time.monotonic()))
            if self._stop.is_set():
                break
            self._one()

    def stop(self) -> None:
        """Stop sending; the clients already waiting go on (see :meth:`wait`)."""
        self._stop.set()

    def wait(self, timeout: float) -> bool:
        """Wait until every client has its answer or gave up; True if they all finished in time."""
        _done, pending = futures.wait(self._futures, timeout=timeout)
        return not pending

    def close(self) -> None:
        """Stop the clients' threads (those still waiting are left to end with the process)."""
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, *args: Any) -> None:
        self._futures.append(self._pool.submit(*args))

    def _one(self) -> None:
        self._count += 1
        key = f"{self.seed}-{self._count}"
        via = self.rng.choices(VIAS, weights=(3, 2, 1, 1, 1, 1))[0]
        model = self.rng.choice(MODELS)["name"]
        kind = "chat" if "chat" in via or (via in ("submit", "celery") and self.rng.random() < 0.3) else "generate"
        options = {"num_predict": self.rng.randint(4, 24)}
        text = f"chaos job {key}: {self.rng.choice(['why', 'how', 'when'])} {self.rng.randint(0, 10**9)}"
        entry = Entry(key, via, model, kind, text, options, 0.0)
        if via.startswith("gateway"):
            self._spawn(self._gateway, entry)
        elif via == "submit":
            self._submit(entry)
        else:
            self._send_task(entry)

    def _request(self, entry: Entry) -> dict[str, Any]:
        if entry.kind == "chat":
            return {"model": entry.model, "messages": [{"role": "user", "content": entry.text}],
                    "options": entry.options}
        return {"model": entry.model, "prompt": entry.text, "options": entry.options}

    # --- mm.submit ------------------------------------------------------------------------
    def _submit(self, entry: Entry) -> None:
        import mm

        request = self._request(entry)
        try:
            job = mm.submit(entry.model, request.get("prompt"), messages=request.get("messages"), kind=entry.kind,
                            options=entry.options, priority=self.rng.choice(["high", "normal", "low"]))
        except Exception as exc:  # noqa: BLE001 - not accepted (Redis restarting...)
            self.ledger.refuse(entry.via, exc)
            return
        entry.accepted_at, entry.job_id = time.time(), job.id
        self.ledger.add(entry)
        self._spawn(self._wait_submitted, entry, job)

    def _wait_submitted(self, entry: Entry, job: Any) -> None:
        from mm.errors import JobCancelled, JobFailed, JobLost

        try:
            result = self._patiently(job.get)
        except JobLost as exc:
            entry.outcome, entry.reason = "lost", f"{exc} (then: {self._trace(entry.job_id)})"
        except JobCancelled as exc:
            entry.outcome, entry.reason = "cancelled", str(exc)
        except JobFailed as exc:
            entry.outcome, entry.reason = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - a timeout: left to the final reading
            entry.reason = f"client: {type(exc).__name__}: {exc}"
            return
        else:
            entry.outcome, entry.seen = "complete", answer_text(entry.kind, result)
        entry.ended_at = time.time()

    def _trace(self, job_id: str) -> str:
        """What Redis holds of a job its client was told is lost, read at once."""
        from mm import keys, store

        try:
            r = store.connect()
            return f"record {r.hgetall(keys.job(job_id))}, result {r.get('celery-task-meta-' + job_id)!r:.80}"
        except Exception as exc:  # noqa: BLE001 - Redis away again
            return repr(exc)

    # --- a stock Celery client ---------------------------------------------------------------
    def _send_task(self, entry: Entry) -> None:
        from mm import keys
        from mm.app import INFER_TASK

        request = self._request(entry) | {"kind": entry.kind}
        try:
            result = self._stock.send_task(INFER_TASK, kwargs={"request": request},
                                           queue=keys.model_queue(entry.model), priority=self.rng.choice([0, 3, 6]))
        except Exception as exc:  # noqa: BLE001 - not accepted
            self.ledger.refuse(entry.via, exc)
            return
        entry.accepted_at, entry.job_id = time.time(), result.id
        self.ledger.add(entry)
        self._spawn(self._wait_sent, entry, result)

    def _patiently(self, get: Any) -> Any:
        """``get(timeout=...)`` asked again every few seconds until it answers, WAIT_S pass or the load is closed."""
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                return get(timeout=5)
            except TimeoutError:
                if self._closed.is_set() or time.monotonic() > deadline:
                    raise

    def _wait_sent(self, entry: Entry, result: Any) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not self._closed.is_set():
            try:
                value = result.get(timeout=5, propagate=False)
            except Exception:  # noqa: BLE001 - a timeout, or Redis restarting: ask again
                time.sleep(0.5)
                continue
            if result.successful():
                entry.outcome, entry.seen = "complete", answer_text(entry.kind, value)
            else:
                entry.outcome = "cancelled" if result.state == "REVOKED" else "failed"
                entry.reason = str(value)
            entry.ended_at = time.time()
            return

    # --- the gateway ---------------------------------------------------------------------------
    def _gateway(self, entry: Entry) -> None:
        stream = entry.via.endswith("-stream")
        path = "/api/chat" if entry.kind == "chat" else "/api/generate"
        body = self._request(entry) | {"stream": stream}
        started = time.time()
        try:
            with httpx.stream("POST", self.gateway_url + path, json=body, timeout=GATEWAY_TIMEOUT_S) as response:
                job_id = response.headers.get("X-MM-Job-Id", "")
                if response.status_code != 200:
                    response.read()
                    self._gateway_refused(entry, job_id, response.status_code, response.text, started)
                    return
                entry.accepted_at, entry.job_id = started, job_id
                self.ledger.add(entry)
                self._read_answer(entry, response, stream)
        except httpx.HTTPError as exc:
            if not entry.accepted_at:
                self.ledger.refuse(entry.via, exc)
            else:  # the gateway died mid-answer: the job goes on in mm, read at the end
                entry.reason = f"client: {type(exc).__name__}"

    def _gateway_refused(self, entry: Entry, job_id: str, status: int, text: str, started: float) -> None:
        """A non-200 answer: not accepted, but a job it names is followed anyway (it must end too)."""
        self.ledger.refuse(entry.via, f"HTTP {status}: {text[:80]}")
        if job_id:
            entry.accepted_at, entry.job_id = started, job_id
            entry.via += "+error"
            entry.reason = f"HTTP {status}: {text[:200]}"
            self.ledger.add(entry)

    def _read_answer(self, entry: Entry, response: httpx.Response, stream: bool) -> None:
        if not stream:
            answer = json.loads(response.read())
            entry.outcome, entry.seen, entry.ended_at = "complete", answer_text(entry.kind, answer), time.time()
            return
        pieces = []
        for line in response.iter_lines():
            if not line.strip():
                continue
            chunk = json.loads(line)
            if chunk.get("error"):
                entry.outcome, entry.reason, entry.ended_at = "failed", str(chunk["error"]), time.time()
                return
            pieces.append(answer_text(entry.kind, chunk))
            if chunk.get("done"):
                entry.outcome, entry.seen, entry.ended_at = "complete", "".join(pieces), time.time()
                return
        entry.reason = "client: the stream ended without its final line"
