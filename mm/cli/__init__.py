"""The ``mm`` command: a thin click group over library calls, one module per command."""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute"; imported only when that command runs.
COMMANDS = {
    "runtime": "mm.cli.runtime:runtime",
    "enqueue": "mm.cli.enqueue:enqueue",
    "up": "mm.cli.up:up",
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


@click.group(cls=LazyGroup)
def main() -> None:
    """mm: schedule LLM inference jobs on GPU hosts."""
