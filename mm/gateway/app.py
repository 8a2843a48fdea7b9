"""The gateway's tornado application: routes, and serving until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging

import tornado.web

from mm import serving, store
from mm.gateway import batch_api, jobs, models, monitor, openai_api, openapi, pages, prom, proxy, pulls, quality
from mm.gateway.base import DRAIN_FACTOR, HARD_MAX_HEADER_BYTES, Gateway, NotFoundHandler
from mm.settings import Settings

log = logging.getLogger("mm.gateway")


def routes(gw: Gateway) -> list[tuple]:
    """Every endpoint, in matching order (the first pattern that matches the whole path wins)."""
    return [
        *jobs.handlers(gw),        # job manager API: /api/submit, /api/job/<id>, /api/stats, /api/health
        *monitor.handlers(gw),     # model monitor: /models/active|idle|activity, /models/<name>/report, /health
        *quality.handlers(gw),     # quality metrics: /api/metrics, /stats/<name>/<version>
        *proxy.handlers(gw),       # Ollama: /api/generate, /api/chat, /api/embed, /api/tags, /api/ps, ...
        *pulls.handlers(gw),       # Ollama: /api/pull, /api/delete, through the leader
        *models.handlers(gw),      # model control, deployment history: /api/models[/<name>[/start|stop|infer|history]]
        *prom.handlers(gw),        # /metrics
        *openapi.handlers(gw),     # /openapi.json
        *batch_api.handlers(gw),   # OpenAI: /v1/files, /v1/batches (before the /v1 catch-all)
        *openai_api.handlers(gw),  # OpenAI: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings
        *pages.handlers(gw),       # / and /static/*
        *openai_api.fallback(gw),  # OpenAI's 404 for any other /v1 path: last, after every /v1 route
    ]


def build_app(gw: Gateway) -> tornado.web.Application:
    return tornado.web.Application(
        routes(gw), default_handler_class=NotFoundHandler, default_handler_args={"gw": gw},
        compress_response=False,
    )


async def serve(settings: Settings, host: str, port: int) -> None:
    """Serve on ``host:port`` until SIGTERM/SIGINT, then close connections and thread pools."""
    gw = Gateway.create(settings, store.connect(settings.redis_url))
    batches = batch_api.start(gw)
    server = build_app(gw).listen(
        port, address=host, max_body_size=DRAIN_FACTOR * settings.gateway_max_body + 1,
        idle_connection_timeout=300, max_header_size=HARD_MAX_HEADER_BYTES,
    )
    log.info("gateway listening on http://%s:%d (auth %s, max body %d bytes)", host, port,
             "on" if gw.api_keys else "off", settings.gateway_max_body)
    await serving.until_signalled()
    log.info("gateway shutting down")
    batches.stop.set()
    batches.wake.set()
    await serving.close(server, log)
    gw.close()
    log.info("gateway stopped")


def run(settings: Settings, host: str, port: int) -> None:
    """Blocking entry point used by ``mm gateway``."""
    asyncio.run(serve(settings, host, port))
