"""Serving a tornado HTTP server until SIGTERM or SIGINT, then closing it gracefully.

Used by both of mm's servers: the gateway and the embedded runtime.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from tornado.httpserver import HTTPServer

CLOSE_TIMEOUT_S = 5


async def until_signalled() -> None:
    """Return once the process receives SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def close(server: HTTPServer, log: logging.Logger) -> None:
    """Stop accepting connections, then close the open ones, waiting at most ``CLOSE_TIMEOUT_S`` for them."""
    server.stop()
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=CLOSE_TIMEOUT_S)
    except TimeoutError:
        log.warning("connections still open after %ds; closing anyway", CLOSE_TIMEOUT_S)
