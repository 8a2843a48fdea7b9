"""A bare Celery app with a no-op task and a runtime-call task: yardsticks for mm's per-job overhead.

Configured like mm's app where it matters for a round trip (JSON, acks late, reject on worker
lost, prefetch 1, Redis broker and result backend, priority lists), and nothing else: no
bootsteps, no job records, no runtime call. Its worker is started by ``bench/overhead.py``:

    BENCH_REDIS_URL=redis://... BENCH_RUNTIME_URL=http://... \
        celery -A bench.noop_app worker -P threads -c 8 -Q bench.noop
"""

from __future__ import annotations

import os
import threading

import ollama
from celery import Celery

from mm import keys

QUEUE = "bench.noop"
TASK = "bench.noop"
RUNTIME_TASK = "bench.runtime_call"

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
             backend=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json", result_serializer="json", accept_content=["json"], result_accept_content=["json"],
    task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": 3600, "priority_steps": keys.PRIORITY_STEPS,
                              "queue_order_strategy": "priority", "sep": keys.PRIORITY_SEP},
    result_backend_transport_options={"visibility_timeout": 3600},
    task_default_queue=QUEUE, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
)


@app.task(name=TASK)
def noop(payload: dict) -> dict:
    """Return the payload: the smallest task that still carries a job-sized message both ways."""
    return payload


_local = threading.local()  # one ollama client per pool thread, kept alive like mm's


@app.task(name=RUNTIME_TASK)
def runtime_call(payload: dict) -> dict:
    """The payload's generate call on the runtime and nothing else: what any Celery task that calls
    the runtime pays, with none of mm's scheduling or bookkeeping."""
    if not hasattr(_local, "client"):
        _local.client = ollama.Client(host=os.environ["BENCH_RUNTIME_URL"])
    return _local.client.generate(model=payload["model"], prompt=payload["prompt"], options=payload["options"],
                                  keep_alive=-1).model_dump(exclude_none=True)
