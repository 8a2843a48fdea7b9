"""A bare Celery app with one no-op task: the yardstick for mm's per-job overhead.

Configured like mm's app where it matters for a round trip (JSON, acks late, reject on worker
lost, prefetch 1, Redis broker and result backend, priority lists), and nothing else: no
bootsteps, no job records, no runtime call. Its worker is started by ``bench/overhead.py``:

    BENCH_REDIS_URL=redis://... celery -A bench.noop_app worker -P threads -c 8 -Q bench.noop
"""

from __future__ import annotations

import os

from celery import Celery

from mm import keys

QUEUE = "bench.noop"
TASK = "bench.noop"

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
