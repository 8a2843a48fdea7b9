"""Readable logs: requests that poll a runtime every heartbeat are logged at DEBUG, not INFO.

The node agent reads ``/api/ps`` every second and ``/api/tags`` every few; at INFO, their request
lines (httpx's in the gpu-broker, the access log in the runtime) made most of a node's log.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

# What health checks and the node agent read over and over; none of them changes anything.
POLL_PATHS = frozenset({"/", "/api/ps", "/api/tags", "/api/version"})


def is_poll(method: str, path: str) -> bool:
    """Whether a request is a read that clients repeat every few seconds."""
    return method in ("GET", "HEAD") and path in POLL_PATHS


def poll_level(method: str, path: str, status: int) -> int:
    """The level to log a served request at: DEBUG for a successful poll, INFO for the rest."""
    return logging.DEBUG if status < 400 and is_poll(method, path) else logging.INFO


# httpx's line after each request: HTTP Request: GET http://host/api/ps "HTTP/1.1 200 OK"
_REQUEST_LINE = re.compile(r'HTTP Request: (?P<method>[A-Z]+) (?P<url>\S+) "HTTP/[\d.]+ (?P<status>\d{3})')


class _PollsAtDebug(logging.Filter):
    """Turns httpx's ``HTTP Request: GET …/api/ps "HTTP/1.1 200 OK"`` lines into DEBUG records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        # The formatted message, not record.args: a library's record factory may have merged them.
        line = _REQUEST_LINE.match(record.getMessage())
        if line is None:
            return True
        path = urlsplit(line["url"]).path or "/"
        if poll_level(line["method"], path, int(line["status"])) != logging.DEBUG:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True


def quiet_http_polls() -> None:
    """Log this process's HTTP client requests that are polls at DEBUG (idempotent)."""
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _PollsAtDebug) for f in logger.filters):
        logger.addFilter(_PollsAtDebug())
