"""Celery's task router for mm (``task_routes``): a job goes to its model's queue at its priority.

With it, ``celery -A mm.app call mm.infer`` and ``app.send_task("mm.infer", ...)`` need no
``queue=``. A queue or priority the caller gives still wins (Celery merges the route under them).
"""

from __future__ import annotations

from typing import Any

from mm import keys

INFER_TASK = "mm.infer"
BEAT_TASK_PREFIX = "mm.beat."


def infer_request(args: Any, kwargs: Any) -> dict[str, Any] | None:
    """The job request of an ``mm.infer`` call: ``kwargs["request"]`` or the first positional argument."""
    request = (kwargs or {}).get("request")
    if request is None and args:
        request = args[0]
    return request if isinstance(request, dict) else None


def route(name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any = None, **_: Any) -> dict | None:
    """The route of one task: its model's queue for ``mm.infer``, ``mm.beat`` for beat's tasks."""
    if name == INFER_TASK:
        request = infer_request(args, kwargs)
        model = request.get("model") if request else None
        if not isinstance(model, str) or not model:
            return None  # the default queue; the intake there fails it with the validation message
        priority: Any = request.get("priority") if request else None  # as the client sent it
        return {"queue": keys.model_queue(model), "priority": keys.PRIORITIES.get(priority, keys.PRIORITIES["normal"])}
    if name.startswith(BEAT_TASK_PREFIX):
        return {"queue": keys.BEAT_QUEUE}
    return None
