"""``mm config``: every setting with its current value, type, default and meaning."""

from __future__ import annotations

import dataclasses
import re

import click

from mm import settings as settings_module

SECRET = re.compile(r"(://[^:/@]*:)([^@]+)(@)")


def redact(value: object) -> object:
    """Hide the password part of URLs and any value of a *key*/*token* setting."""
    return SECRET.sub(r"\1***\3", value) if isinstance(value, str) else value


@click.command()
@click.option("--markdown", is_flag=True, help="Print the table of docs/settings.md (defaults, not current values).")
def config(markdown: bool) -> None:
    """Show mm's settings (MM_* environment variables)."""
    rows = settings_module.describe()
    if markdown:
        click.echo("| variable | type | default | meaning |\n|---|---|---|---|")
        for name, typ, default, doc in rows:
            shown = "(hostname)" if name == "MM_NODE" else default
            click.echo(f"| `{name}` | {typ} | `{shown}` | {doc} |")
        return
    current = settings_module.get()
    for (name, _typ, _default, doc), field in zip(rows, dataclasses.fields(current), strict=True):
        value = getattr(current, field.name)
        if any(word in field.name for word in ("key", "token", "password", "auth")) and value:
            value = "***"
        click.echo(f"{name}={redact(value)}    # {doc}")
