"""Log lines an operator can follow: each names its component and, where there is one, the job,
model and node; ``MM_LOG_FORMAT=json`` writes one JSON object per line (for Loki or ELK).

Components: ``api`` (the gateway), ``queue`` (submission and intake), ``scheduler`` (the leader),
``node`` (the gpu-broker's agent), ``worker`` (model-workers), ``runtime`` (``mm runtime``),
``beat``, ``monitor`` (activity, metrics, alerts) and ``registry``. A record's component comes from
its logger's name; a Celery record (``celery.*``) takes its process's. Inside a Celery task the
record carries the task's job id and model. Known secrets (Redis passwords, API keys) never reach
a line: they are replaced by ``***``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from mm.settings import Settings

FORMATS = ("text", "json")
# Logger name prefix -> component; the longest matching prefix wins.
COMPONENTS = {
    "mm.gateway": "api", "mm.batches": "api", "mm.client": "queue", "mm.intake": "queue",
    "mm.leader": "scheduler", "mm.scheduling": "scheduler", "mm.node": "node", "mm.memory": "node",
    "mm.worker": "worker", "mm.runtime": "runtime", "mm.beat": "beat", "mm.activity": "monitor",
    "mm.alerts": "monitor", "mm.metrics": "monitor", "mm.registry": "registry", "mm.model_ops": "registry",
}
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(component)s] %(name)s: %(message)s%(context)s"
URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)([^@\s]+)(@)")
CONTEXT_FIELDS = ("job_id", "model", "node")

_process_component = "api"
_process_node = ""
_secrets: tuple[str, ...] = ()


def component_of(logger_name: str) -> str:
    """The component a logger's records belong to (the process's own for Celery's and others')."""
    best = ""
    for prefix in COMPONENTS:
        if (logger_name == prefix or logger_name.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return COMPONENTS[best] if best else _process_component


def redact(text: str) -> str:
    """``text`` with URL passwords and the known secrets replaced by ``***``."""
    text = URL_PASSWORD.sub(r"\1***\3", text)
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def _task_context() -> dict[str, str]:
    """The job id and model of the Celery task running in this thread, if any."""
    from celery._state import get_current_task  # celery is a base dependency

    task = get_current_task()
    if task is None or task.request.id is None:
        return {}
    context = {"job_id": str(task.request.id)}
    request = (task.request.kwargs or {}).get("request")
    if isinstance(request, dict) and isinstance(request.get("model"), str):
        context["model"] = request["model"]
    return context


def context_of(record: logging.LogRecord) -> dict[str, str]:
    """job_id, model and node of a record: its own ``extra``, else its task's, else the process's node."""
    context = {k: str(getattr(record, k)) for k in CONTEXT_FIELDS if getattr(record, k, None)}
    if "job_id" not in context:
        context = _task_context() | context
    if "node" not in context and _process_node:
        context["node"] = _process_node
    return context


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> [component] logger: message (job=… model=… node=…)``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.component = component_of(record.name)
        context = context_of(record)
        record.context = (" (" + " ".join(f"{k.removesuffix('_id')}={v}" for k, v in context.items()) + ")"
                          if context else "")
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, component, logger, message, job_id, model, node, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "component": component_of(record.name), "logger": record.name,
            "message": record.getMessage(), **context_of(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str))


def formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``MM_LOG_FORMAT`` (``text`` or ``json``)."""
    return JsonFormatter() if fmt == "json" else TextFormatter()


def set_process(settings: Settings, component: str, node: bool = False) -> None:
    """Name this process's component (for loggers outside mm), its node, and the secrets to hide."""
    global _process_component, _process_node, _secrets
    _process_component = component
    _process_node = settings.node if node else ""
    keys = [k.strip() for k in settings.gateway_api_keys.split(",") if k.strip()]
    _secrets = tuple(s for s in (*keys, settings.api_key) if s)


def configure(settings: Settings, component: str, level: int | str = logging.INFO, node: bool = False) -> None:
    """Log this process's records to stderr in ``MM_LOG_FORMAT``, as ``component``."""
    set_process(settings, component, node)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(settings.log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def reformat(logger: logging.Logger, settings: Settings) -> None:
    """Give every handler of ``logger`` mm's formatter (Celery's logging hooks call this)."""
    for handler in logger.handlers:
        handler.setFormatter(formatter(settings.log_format))


def install_celery_hooks() -> None:
    """Format the logs of Celery's processes (workers, gpu-brokers, beat) as mm's own."""
    from celery import signals

    from mm.settings import get as get_settings

    def setup(logger: logging.Logger, **_: Any) -> None:
        settings = get_settings()
        if _process_component == "api":  # the first hook of this process: a worker until told otherwise
            set_process(settings, "worker", node=True)
        reformat(logger, settings)

    def beat_started(**_: Any) -> None:
        set_process(get_settings(), "beat")

    def worker_init(instance: Any = None, **_: Any) -> None:
        if get_settings().log_format == "json" and instance is not None:
            instance.quiet = True  # no banner: every line of the process is a JSON object

    def worker_ready(sender: Any = None, **_: Any) -> None:
        if get_settings().log_format == "json" and sender is not None:
            # Celery prints "worker: Warm shutdown (MainProcess)" on SIGTERM: the same handler, silent.
            from celery.apps.worker import install_worker_term_handler  # type: ignore[attr-defined]

            install_worker_term_handler(sender.controller, verbose=False)

    logging.captureWarnings(True)  # e.g. Celery's SecurityWarning when run as root, as a log record
    signals.after_setup_logger.connect(setup, weak=False)
    signals.after_setup_task_logger.connect(setup, weak=False)
    signals.beat_init.connect(beat_started, weak=False)
    signals.celeryd_init.connect(worker_init, weak=False)
    signals.worker_ready.connect(worker_ready, weak=False)
