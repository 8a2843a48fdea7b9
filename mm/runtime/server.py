"""Build the tornado application and run it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging

import tornado.web

from mm import serving
from mm.runtime import api, api_models
from mm.runtime.catalog import Catalog, ModelSpec
from mm.runtime.engines import make_engine
from mm.runtime.errors import human_bytes
from mm.runtime.handlers import RuntimeState, log_request
from mm.runtime.scheduler import Scheduler

log = logging.getLogger("mm.runtime")


def build_app(state: RuntimeState) -> tornado.web.Application:
    """The Ollama API routes over ``state``."""
    args = {"state": state}
    return tornado.web.Application(
        [
            (r"/", api_models.RootHandler, args),
            (r"/api/version", api_models.VersionHandler, args),
            (r"/api/tags", api_models.TagsHandler, args),
            (r"/api/show", api_models.ShowHandler, args),
            (r"/api/ps", api_models.PsHandler, args),
            (r"/api/pull", api_models.PullHandler, args),
            (r"/api/delete", api_models.DeleteHandler, args),
            (r"/api/generate", api.GenerateHandler, args),
            (r"/api/chat", api.ChatHandler, args),
            (r"/api/embed", api.EmbedHandler, args),
            (r"/api/embeddings", api.LegacyEmbeddingsHandler, args),
            (r"/mm/queue", api_models.QueueHandler, args),  # mm's own: what waits for a slot or a load
        ],
        default_handler_class=api_models.NotFoundHandler,
        log_function=log_request,
        compress_response=False,
    )


async def serve(specs: list[ModelSpec], host: str, port: int, memory: int, evict: str) -> None:
    """Serve ``specs`` on ``host:port`` within ``memory`` bytes until SIGTERM/SIGINT, then clean up."""
    engines = {name: make_engine(name) for name in sorted({spec.engine for spec in specs})}
    scheduler = Scheduler(engines, budget=memory, evict=evict)
    scheduler.start()
    server = build_app(RuntimeState(Catalog(specs), scheduler)).listen(port, address=host)
    log.info("listening on http://%s:%d models=%s memory=%s evict=%s", host, port,
             ",".join(spec.name for spec in specs), human_bytes(memory), evict)

    await serving.until_signalled()
    log.info("shutting down")
    await serving.close(server, log)
    await scheduler.close()
    for engine in engines.values():
        await engine.close()
    log.info("stopped")


def run(specs: list[ModelSpec], host: str, port: int, memory: int, evict: str) -> None:
    """Blocking entry point used by ``mm runtime``."""
    asyncio.run(serve(specs, host, port, memory, evict))
