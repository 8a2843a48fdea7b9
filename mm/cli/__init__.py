"""The ``mm`` command: a thin click group over library calls, one module per command."""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute"; imported only when that command runs.
COMMANDS = {
    "runtime": "mm.cli.runtime:runtime",
    "enqueue": "mm.cli.enqueue:enqueue",
    "up": "mm.cli.up:up",
    "jobs": "mm.cli.jobs:jobs",
    "config": "mm.cli.config:config",
    "check": "mm.cli.check:check",
    "models": "mm.cli.models:models",
    "alerts": "mm.cli.alerts:alerts",
    "gateway": "mm.cli.gateway:gateway",
    "top": "mm.cli.top:top",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        import redis

        try:
            return super().invoke(ctx)
        except redis.AuthenticationError as exc:
            raise click.ClickException(f"Redis refused the credentials in MM_REDIS_URL: {exc}") from None
        except redis.ConnectionError as exc:
            raise click.ClickException(f"cannot reach Redis at MM_REDIS_URL: {exc}") from None


@click.group(cls=LazyGroup)
def main() -> None:
    """mm: schedule LLM inference jobs on GPU hosts."""
