"""``mm runtime``: serve Ollama's HTTP API from simulated or llama.cpp models."""

from __future__ import annotations

import logging

import click

from mm import log_format
from mm.runtime.catalog import default_models, load_models_file
from mm.runtime.errors import GiB, parse_bytes
from mm.runtime.scheduler import EVICT_MODES
from mm.settings import get as get_settings


def _memory(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        size = parse_bytes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if size <= 0:
        raise click.BadParameter("must be > 0")
    return size


@click.command()
@click.option("--engine", type=click.Choice(["sim", "llama"]), default="sim", show_default=True,
              help="Default model list when --models is not given: simulated models, or gemma3:270m.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=11434, show_default=True, help="Port to listen on.")
@click.option("--models", "models_file", type=click.Path(dir_okay=False), default=None,
              help="JSON list of models to serve (see docs/runtime.md).")
@click.option("--memory", default=str(8 * GiB), callback=_memory, show_default="8 GiB",
              help="Memory budget in bytes (suffixes like 8GiB, 512MiB accepted).")
@click.option("--evict", type=click.Choice(EVICT_MODES), default="none", show_default=True,
              help="none: a load that does not fit fails; ollama: evict idle models like Ollama does.")
def runtime(engine: str, host: str, port: int, models_file: str | None, memory: int, evict: str) -> None:
    """Serve Ollama's HTTP API (generate, chat, embed, ps, pull...) from an embedded runtime."""
    try:
        specs = load_models_file(models_file) if models_file else default_models(engine)
    except ValueError as exc:
        raise click.UsageError(f"--models: {exc}") from None
    log_format.configure(get_settings(), "runtime")
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    from mm.runtime.server import run

    run(specs, host, port, memory, evict)
