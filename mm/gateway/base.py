"""The base of every gateway handler: auth, body limits, strict JSON, JSON errors, blocking calls.

Bad input always ends as a 4xx JSON error ``{"error": "...", "field": "..."}`` (Ollama's clients
read ``error``; ``field`` names what is wrong, as :class:`mm.errors.ValidationError` does).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import math
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast, overload

import redis
import tornado.http1connection
import tornado.httputil
import tornado.iostream
import tornado.web

from mm.errors import JobCancelled, JobExpired, JobFailed, JobLost, RedisFull, UnknownModel, ValidationError
from mm.settings import Settings

log = logging.getLogger("mm.gateway")

T = TypeVar("T")
# A body this many times over the limit is refused before it is read (the connection is closed);
# a smaller one is read and dropped so that the client sees the 413 instead of a reset connection.
DRAIN_FACTOR = 4
# A request's header block over MAX_HEADER_BYTES is answered 431. Tornado itself drops the connection
# past HARD_MAX_HEADER_BYTES (Go's default, as Ollama has), so mm's own limit sits well below it.
MAX_HEADER_BYTES = 64 * 1024
HARD_MAX_HEADER_BYTES = 1024 * 1024
RETRY_FULL_S = 5  # Retry-After of a submission refused while Redis is near its maxmemory
RETRY_QUEUED_S = 5  # Retry-After of a 429: a submission past MM_MAX_QUEUED_PER_KEY (or a runtime's)


class ApiError(Exception):
    """A request refused with ``status``; ``field`` names the input at fault."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field
        self.message = message


@dataclass
class Gateway:
    """What every handler shares: settings, Redis, the thread pools, the Prometheus collector."""

    settings: Settings
    r: redis.Redis
    executor: ThreadPoolExecutor
    stream_executor: ThreadPoolExecutor
    api_keys: frozenset[str] = frozenset()
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: Settings, r: redis.Redis) -> Gateway:
        keys_ = frozenset(k.strip() for k in settings.gateway_api_keys.split(",") if k.strip())
        return cls(
            settings=settings, r=r,
            executor=ThreadPoolExecutor(settings.gateway_threads, thread_name_prefix="mm-gw"),
            stream_executor=ThreadPoolExecutor(settings.gateway_max_streams, thread_name_prefix="mm-gw-stream"),
            api_keys=keys_,
        )

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries one of the keys (the scheme in any case)."""
        return not self.api_keys or self.key_of(header) is not None

    def key_of(self, header: str | None) -> str | None:
        """The key an ``Authorization: Bearer`` header carries, if it is one of the keys."""
        scheme, _, credentials = (header or "").strip().partition(" ")
        if not self.api_keys or scheme.lower() != "bearer":
            return None
        presented = credentials.strip()
        # Compare with every key (no early exit), so timing tells nothing about which one was close.
        matched = [hmac.compare_digest(presented.encode(), k.encode()) for k in self.api_keys]
        return presented if any(matched) else None

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.stream_executor.shutdown(wait=False, cancel_futures=True)


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes, max_depth: int) -> Any:
    """Strict JSON from a request body: UTF-8 only, no NaN/Infinity, nesting within ``max_depth``.

    Raises:
        ApiError: 400 with ``field="body"`` naming what is wrong.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "body", f"is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise ApiError(400, "body", "is empty; a JSON object is required")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, "body", f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise ApiError(400, "body", f"is not valid JSON: {exc}") from None
    if json_depth(value) > max_depth:
        raise ApiError(400, "body", f"JSON nested deeper than {max_depth} levels")
    return value


def status_for(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, field, message) for an exception raised while serving a request."""
    if isinstance(exc, ApiError):
        return exc.status, exc.field, exc.message
    if isinstance(exc, UnknownModel):
        return 404, "model", exc.message
    if isinstance(exc, ValidationError):
        return 400, exc.field, exc.message
    if isinstance(exc, tornado.web.HTTPError):
        message = exc.log_message or tornado.httputil.responses.get(exc.status_code, "error")
        return exc.status_code, "", message % exc.args
    if isinstance(exc, RedisFull):
        return 503, "", str(exc)
    if isinstance(exc, JobLost):
        return 503, "job_id", str(exc)
    if isinstance(exc, JobCancelled):
        return 409, "job_id", str(exc)
    if isinstance(exc, JobExpired):
        return 504, "job_id", str(exc)
    if isinstance(exc, JobFailed):
        return 502, "job_id", str(exc)
    if isinstance(exc, redis.RedisError):
        return 503, "", f"Redis unavailable: {exc}"
    return 500, "", "internal error"


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    """JSON in and out, with auth and body limits applied before the body is read."""

    public = False  # health endpoints and the static status page shell need no key

    def initialize(self, gw: Gateway) -> None:
        self.gw = gw
        self.settings_ = gw.settings
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_big = False
        self.streaming = False  # NDJSON lines already sent: errors must go in-band
        self.client_gone = False  # the client closed the connection (stop waiting for its job)
        self._gone_callbacks: list[Callable[[], None]] = []

    def on_connection_close(self) -> None:
        self.client_gone = True
        for callback in self._gone_callbacks:
            callback()
        super().on_connection_close()  # fails a body still awaited, so nothing waits for it forever

    def when_gone(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) when the client closes the connection; now if it has."""
        if self.client_gone:
            callback()
        else:
            self._gone_callbacks.append(callback)

    # --- request body -----------------------------------------------------------------
    def body_limit(self) -> int:
        """The largest body this endpoint accepts, in bytes (413 past it)."""
        return self.settings_.gateway_max_body

    async def prepare(self) -> None:
        try:
            self.check_request()
        except ApiError as exc:
            length = self.request.headers.get("Content-Length", "")
            drainable = not length.isdigit() or int(length) <= DRAIN_FACTOR * self.body_limit()
            if exc.status not in (413, 431) and drainable:
                await self.discard_body()
            raise

    def check_request(self) -> None:
        """Refuse a request from its headers alone: size of headers and body, and the API key."""
        header_bytes = len(self.request.uri or "") + sum(len(k) + len(v) + 4 for k, v in self.request.headers.get_all())
        if header_bytes > MAX_HEADER_BYTES:
            raise ApiError(431, "headers", f"the request's header block is over {MAX_HEADER_BYTES} bytes")
        limit = self.body_limit()
        length = self.request.headers.get("Content-Length")
        declared = int(length) if length is not None and length.isdigit() else None
        connection = cast(tornado.http1connection.HTTP1Connection, self.request.connection)  # the HTTP/1 server's
        if declared is not None:
            # Tornado itself would answer a plain 400 to a Content-Length over this connection's limit;
            # a request refused here is answered without its body being read (the connection closes).
            connection.set_max_body_size(max(declared, limit) + 1)
        else:  # chunked: read at most DRAIN_FACTOR times the limit, then the connection is dropped
            connection.set_max_body_size(DRAIN_FACTOR * limit)
        if not self.public and not self.gw.authorized(self.request.headers.get("Authorization")):
            raise ApiError(401, "Authorization", "a valid 'Authorization: Bearer <key>' header is required")
        if declared is not None:
            if declared > limit:
                if declared > DRAIN_FACTOR * limit:
                    # Answered before the body is read; tornado then closes the connection unread.
                    raise ApiError(413, "body", f"is {declared} bytes, over the limit of {limit}")
                self._too_big = True

    async def discard_body(self) -> None:
        """Read the rest of the request and drop it, so that the connection can serve the next one.

        Tornado reads a streamed body only once ``prepare`` has finished; an answer sent before that
        would close the connection (without saying so), and a client reusing it gets a reset. So the
        refusal waits for the body, as tornado would wait after a normal ``prepare``.
        """
        self._too_big = True  # data_received keeps nothing from now on
        prepared = getattr(self, "_prepared_future", None)
        body = getattr(self.request, "_body_future", None)
        if prepared is None or body is None:
            return
        if not prepared.done():
            prepared.set_result(None)
        await body  # StreamClosedError if the client hangs up: nothing is answered then

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.body_limit():
            self._too_big = True
            self._chunks.clear()
        if not self._too_big:
            self._chunks.append(chunk)

    @functools.cached_property
    def body(self) -> bytes:
        if self._too_big:
            raise ApiError(413, "body", f"is {self._size} bytes, over the limit of {self.body_limit()}")
        return b"".join(self._chunks)

    def json_body(self) -> dict[str, Any]:
        """The body as a JSON object (400 naming ``body`` if it is anything else)."""
        value = parse_json(self.body, self.settings_.gateway_max_json_depth)
        if not isinstance(value, dict):
            raise ApiError(400, "body", f"must be a JSON object, not {type(value).__name__}")
        return value

    def optional_json_body(self) -> dict[str, Any]:
        """Like :meth:`json_body`, but an empty body is an empty object."""
        return self.json_body() if self.body.strip() else {}

    # --- query arguments --------------------------------------------------------------
    @overload
    def query_number(self, name: str, default: float, *, minimum: float | None = None,
                     maximum: float | None = None, integer: bool = False) -> float: ...

    @overload
    def query_number(self, name: str, default: None = None, *, minimum: float | None = None,
                     maximum: float | None = None, integer: bool = False) -> float | None: ...

    def query_number(self, name: str, default: float | None = None, *, minimum: float | None = None,
                     maximum: float | None = None, integer: bool = False) -> float | None:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            raise ApiError(400, name, f"must be {'an integer' if integer else 'a number'}, not {raw!r:.40}") from None
        if not math.isfinite(value):
            raise ApiError(400, name, f"must be finite, not {raw!r:.40}")
        if minimum is not None and value < minimum:
            raise ApiError(400, name, f"must be >= {minimum}, not {raw!r:.40}")
        if maximum is not None and value > maximum:
            raise ApiError(400, name, f"must be <= {maximum}, not {raw!r:.40}")
        return value

    # --- responses ---------------------------------------------------------------------
    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")

    def compute_etag(self) -> None:
        return None

    async def head(self, *args: Any, **kwargs: Any) -> None:
        """Every GET route answers HEAD: the GET's status and headers, without its body."""
        if type(self).get is tornado.web.RequestHandler.get:
            raise tornado.web.HTTPError(405)
        result = self.get(*args, **kwargs)
        if result is not None:
            await result

    def finish(self, chunk: Any = None) -> Any:
        # An answer sent before the request was read (a body refused unread, an unknown method) makes
        # tornado close the connection after it: say so, or a client reusing the connection gets a reset.
        if not self._headers_written and not getattr(self.request.connection, "_read_finished", True):
            self.set_header("Connection", "close")
        return super().finish(chunk)

    def send_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(obj, default=str))

    async def send_line(self, obj: Any) -> None:
        """Send one NDJSON line now (the first one switches the response to NDJSON)."""
        if not self.streaming:
            self.streaming = True
            self.set_header("Content-Type", "application/x-ndjson")
        self.write(json.dumps(obj, default=str) + "\n")
        await self.flush()

    def error_headers(self, status_code: int, exc: BaseException | None) -> None:
        """The headers of an error answer: JSON, and what a 401, a 405, a 429 or a full Redis calls for."""
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="mm"')
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        if isinstance(exc, RedisFull):
            self.set_header("Retry-After", str(RETRY_FULL_S))
        if status_code == 429:
            self.set_header("Retry-After", str(RETRY_QUEUED_S))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if exc is not None:
            _status, field_, message = status_for(exc)
        else:
            field_, message = "", tornado.httputil.responses.get(status_code, "error").lower()
        self.error_headers(status_code, exc)
        # Ollama's clients show only "error": it names the field too, unless the message already does.
        body = {"error": f"{field_}: {message}" if field_ and field_ not in message else message}
        if field_:
            body["field"] = field_
        self.finish(json.dumps(body))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, tornado.web.Finish):
            if not self._finished:
                self.finish(*e.args)
            return
        if isinstance(e, (tornado.iostream.StreamClosedError, asyncio.CancelledError)):
            return  # the client went away
        status, _field, message = status_for(e)
        if status >= 500:
            log.error("%s %s failed", self.request.method, self.request.path, exc_info=e)
        if self._finished:
            return
        if self.streaming:  # headers are gone: report in-band, as Ollama does
            try:
                self.finish(json.dumps({"error": message}) + "\n")
            except tornado.iostream.StreamClosedError:
                log.info("%s %s: client gone before the error line: %s", self.request.method, self.request.path,
                         message)
            return
        self.send_error(status, exc_info=sys.exc_info() if sys.exc_info()[1] is e else (type(e), e, None))

    def allowed_methods(self) -> list[str]:
        """The methods this handler implements (for the ``Allow`` header of a 405)."""
        base = tornado.web.RequestHandler
        implemented = [m for m in self.SUPPORTED_METHODS if m != "HEAD"
                       and getattr(type(self), m.lower(), None) is not getattr(base, m.lower(), None)]
        return implemented + ["HEAD"] if "GET" in implemented else implemented

    # --- blocking work -----------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call (Redis, Celery) on the gateway's thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.gw.executor, functools.partial(fn, *args, **kwargs))


class NotFoundHandler(BaseHandler):
    public = True

    def check_request(self) -> None:
        super().check_request()
        raise ApiError(404, "path", f"no endpoint {self.request.method} {self.request.path}")
