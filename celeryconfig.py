"""Celery configuration for a project that sends jobs to mm with plain Celery (only ``celery[redis]``).

mm itself does not read this file (its app reads ``mm.celeryconfig``). Copy it next to your code,
or load it with ``app.config_from_object("celeryconfig")``, then::

    from celery import Celery
    app = Celery(config_source="celeryconfig")
    result = app.send_task("mm.infer", kwargs={"request": {"model": "gemma3:270m", "prompt": "Hi"}},
                           queue="mm.model.gemma3:270m", priority=3)
    print(result.get(timeout=120)["response"])

``queue=`` may be left out: the job then lands in the default queue, and mm's gpu-broker forwards
it to its model's queue. Priority: 0-2 high, 3-5 normal, 6-9 low (0 is served first).
"""

import os

broker_url = result_backend = os.environ.get("MM_REDIS_URL", "redis://localhost:6379/0")
task_serializer = result_serializer = "json"
accept_content = result_accept_content = ["json"]
