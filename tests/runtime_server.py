"""Start ``mm runtime`` as a real child process for tests (simulated or llama.cpp models)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.procs import Proc, free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
# A log line of a request answered in full: "POST /api/chat 200 12.3ms model=... request=<digest> ..."
SERVED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*POST /api/(?:generate|chat|embed|embeddings) 200 "
                    r"(\d+(?:\.\d+)?)ms "
                    r"model=\S+ request=([0-9a-f]{12})(?![^\n]*(?:client=gone|done_reason=load|done_reason=unload))",
                    re.M)


@dataclass
class RuntimeProc:
    """A running ``mm runtime``: its base ``url``, its process and its log."""

    url: str
    port: int
    proc: Proc
    models_file: Path | None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the runtime (SIGKILL after ``timeout``)."""
        self.proc.stop(timeout)

    def output(self) -> str:
        """Everything the runtime logged so far."""
        return self.proc.output()

    def alive(self) -> bool:
        return self.proc.alive()

    def served_spans(self) -> dict[str, list[tuple[float, float]]]:
        """When the runtime took and answered in full each distinct generate/chat/embed request (by
        its body's digest in the log; loads and unloads, which are empty requests, are not counted)."""
        spans: dict[str, list[tuple[float, float]]] = {}
        for m in SERVED.finditer(self.output()):
            end = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            spans.setdefault(m.group(4), []).append((end - float(m.group(3)) / 1000, end))
        return spans

    def served_at(self) -> dict[str, list[float]]:
        """When the runtime answered each distinct request in full (see :meth:`served_spans`)."""
        return {digest: [end for _start, end in spans] for digest, spans in self.served_spans().items()}

    def served(self) -> Counter[str]:
        """How often the runtime answered each distinct request in full (see :meth:`served_spans`)."""
        return Counter({digest: len(spans) for digest, spans in self.served_spans().items()})


def runs_twice(served_spans: dict[str, list[tuple[float, float]]], kills: list[float],
               slack_s: float = 0.1) -> tuple[int, int]:
    """(runs beyond one per request, of which interrupted): an earlier run of a request answered
    again is *interrupted* when a worker was SIGKILLed while the runtime had it (from when the
    runtime took it to when it answered, ``slack_s`` either side for the log's clock): the runtime
    finished it for a worker already gone, or the worker died before storing its answer, so mm
    never had it and ran the job again. Any other extra run is a job run twice."""
    extra = interrupted = 0
    for spans in served_spans.values():
        earlier = sorted(spans, key=lambda span: span[1])[:-1]
        extra += len(earlier)
        interrupted += sum(1 for start, end in earlier if any(start - slack_s <= k <= end + slack_s for k in kills))
    return extra, interrupted


def _answers(url: str) -> bool:
    return httpx.get(f"{url}/api/version", timeout=2).status_code == 200


def start_runtime(
    tmp_path: Path,
    *,
    engine: str = "sim",
    models: list[dict[str, Any]] | None = None,
    memory: int | str | None = None,
    evict: str = "none",
    timeout: float = 60.0,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> RuntimeProc:
    """Start ``mm runtime`` on a free port and wait (up to ``timeout``) until it answers.

    Args:
        tmp_path: where the models file and the log go.
        engine: ``--engine`` (the default model list when ``models`` is ``None``).
        models: model objects, written to a ``--models`` JSON file.
        memory: ``--memory`` budget in bytes (default: the runtime's 8 GiB).
        evict: ``--evict`` mode, ``"none"`` or ``"ollama"``.
        port: a port to listen on (default: a free one), e.g. to restart a runtime in place.
        env: environment variables to add (e.g. ``MM_LOG_FORMAT``).
    """
    port = port or free_port()
    args = [sys.executable, "-c", "from mm.cli import main; main()", "runtime",
            "--engine", engine, "--host", "127.0.0.1", "--port", str(port), "--evict", evict]
    models_file = None
    if models is not None:
        models_file = tmp_path / f"models-{port}.json"
        models_file.write_text(json.dumps(models, indent=1))
        args += ["--models", str(models_file)]
    if memory is not None:
        args += ["--memory", str(memory)]
    env = dict(os.environ, PYTHONUNBUFFERED="1") | (env or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = Proc(args, log=tmp_path / f"runtime-{port}.log", env=env, cwd=str(REPO))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: not proc.alive() or _answers(url), timeout=timeout, what=f"mm runtime on {url}")
        if not proc.alive():
            raise AssertionError(f"mm runtime exited with {proc.popen.returncode}:\n{proc.output()}")
    except BaseException:
        proc.stop()
        raise
    return RuntimeProc(url=url, port=port, proc=proc, models_file=models_file)
