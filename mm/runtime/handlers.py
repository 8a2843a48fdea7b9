"""The base of every HTTP handler: shared state, JSON bodies, Ollama-style errors, request logs."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import tornado.iostream
import tornado.web

from mm import logs
from mm.runtime.catalog import Catalog, ModelSpec
from mm.runtime.errors import ModelNotFound, RuntimeAPIError
from mm.runtime.scheduler import Scheduler

log = logging.getLogger("mm.runtime")

# The Ollama release whose API this runtime mirrors (what /api/version reports).
OLLAMA_VERSION = "0.12.6"


@dataclass
class RuntimeState:
    """What every handler needs: the served models and the scheduler."""

    catalog: Catalog
    scheduler: Scheduler

    def spec(self, name: str) -> ModelSpec:
        """The spec of ``name``.

        Raises:
            ModelNotFound: with Ollama's 404 message.
        """
        spec = self.catalog.get(name)
        if spec is None:
            raise ModelNotFound(name)
        return spec


class BaseHandler(tornado.web.RequestHandler):
    """JSON in, JSON (or NDJSON) out; errors as ``{"error": "..."}``."""

    state: RuntimeState

    def initialize(self, state: RuntimeState) -> None:
        self.state = state
        self.log_detail = ""  # appended to this request's log line
        self.streaming = False  # NDJSON lines already sent: errors must go in-band

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")

    def compute_etag(self) -> None:
        return None

    def send_json(self, obj: Any, status: int = 200) -> None:
        """Finish with one JSON object."""
        self.set_status(status)
        self.finish(json.dumps(obj))

    async def send_line(self, obj: Any) -> None:
        """Send one NDJSON line now (the first one switches the response to NDJSON)."""
        if not self.streaming:
            self.streaming = True
            self.set_header("Content-Type", "application/x-ndjson")
        self.write(json.dumps(obj) + "\n")
        await self.flush()

    def fail(self, error: RuntimeAPIError) -> None:
        """Report ``error``: as the HTTP status and body, or in-band once streaming has begun."""
        self.log_detail += f" error={error.message!r}"
        if self._finished:
            return
        if self.streaming:
            self.finish(json.dumps({"error": error.message}) + "\n")
        else:
            self.send_json({"error": error.message}, error.status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": self._reason.lower() if status_code != 500 else "internal server error"}))


def api_call(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Run a handler method with Ollama-style errors and client disconnects handled.

    A :class:`RuntimeAPIError` becomes its status and ``{"error": ...}`` (an NDJSON error line if
    the stream has begun); anything unexpected becomes a logged 500. A closed connection cancels
    the work (releasing the model's slot) without an error.
    """

    @functools.wraps(method)
    async def wrapper(self: BaseHandler, *args: Any, **kwargs: Any) -> None:
        try:
            await method(self, *args, **kwargs)
        except RuntimeAPIError as exc:
            self.fail(exc)
        except (tornado.iostream.StreamClosedError, asyncio.CancelledError):
            self.log_detail += " client=gone"
            if not self._finished:
                try:  # finishing a closed connection just logs the request
                    self.finish().add_done_callback(lambda f: f.cancelled() or f.exception())
                except Exception:
                    pass
        except Exception as exc:
            log.exception("%s %s failed", self.request.method, self.request.path)
            self.fail(RuntimeAPIError(f"internal error: {exc}"))

    return wrapper


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's ``log_function``: one line per request, with the handler's details; polls at DEBUG."""
    request = handler.request
    level = logs.poll_level(request.method or "", request.path, handler.get_status())
    log.log(level, "%s %s %d %.1fms%s", request.method, request.path, handler.get_status(),
            1000.0 * request.request_time(), getattr(handler, "log_detail", ""))
