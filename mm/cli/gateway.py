"""``mm gateway``: the HTTP gateway (mm's REST endpoints, Ollama-compatible proxy, /metrics, status page)."""

from __future__ import annotations

import click

from mm import log_format
from mm.settings import get as get_settings


@click.command()
@click.option("--host", default=None, help="Address to listen on (default MM_GATEWAY_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on (default MM_GATEWAY_PORT, 5001).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def gateway(host: str | None, port: int | None, log_level: str) -> None:
    """Serve mm over HTTP: REST endpoints, an Ollama-compatible proxy, /metrics and a status page."""
    from mm.gateway.app import run

    settings = get_settings()
    log_format.configure(settings, "api", log_level.upper())
    run(settings, host or settings.gateway_host, settings.gateway_port if port is None else port)
