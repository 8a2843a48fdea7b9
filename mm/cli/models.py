"""``mm models``: which models are active or idle, their activity, manual use reports (idle shutdown's view),
and pulling or deleting a model on the nodes' runtimes through the leader."""

from __future__ import annotations

import json
import time

import click

from mm import activity as activity_lib
from mm import model_ops, store
from mm.errors import UnknownModel
from mm.settings import get as get_settings


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size else "-"


def _print(models: list[activity_lib.ModelActivity], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([m.as_dict() for m in models], indent=1))
        return
    if not models:
        click.echo("(none)")
        return
    rows = [("MODEL", "LAST USED", "STATE", "RESIDENT ON", "SIZE", "QUEUED", "RUNNING", "FLAGS")]
    for m in models:
        state = "active" if m.active else "idle" if m.idle else "recent"
        flags = ",".join(f for f, on in (("pinned", m.pinned), ("warm", m.warm)) if on) or "-"
        rows.append((m.model, _ago(m.idle_s), state, ",".join(m.resident_on) or "-", _gb(m.size), str(m.queued),
                     str(m.in_flight), flags))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@click.group()
def models() -> None:
    """Model activity: active, idle, all, manual use reports; pull and delete."""


@models.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def active(as_json: bool) -> None:
    """Models used within MM_ACTIVE_WINDOW_S (default 10 minutes)."""
    _print(activity_lib.active_models(store.connect(), get_settings()), as_json)


@models.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def idle(as_json: bool) -> None:
    """Models unused for more than MM_IDLE_THRESHOLD_S (default 30 minutes), or never used."""
    _print(activity_lib.idle_models(store.connect(), get_settings()), as_json)


@models.command("activity")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def activity_cmd(as_json: bool) -> None:
    """Every model: last use, resident where, size, queue depth, jobs running."""
    _print(activity_lib.activity(store.connect(), get_settings()), as_json)


@models.command()
@click.argument("name")
def report(name: str) -> None:
    """Mark model NAME as used now (the gateway's POST /models/<name>/report)."""
    try:
        at = activity_lib.report(store.connect(), name)
    except UnknownModel as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name} reported used at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))}")


def _progress_text(line: dict, shown: dict) -> str | None:
    """What to print for one pull progress line: each new status, and downloads every 10%."""
    status = line.get("status", "")
    total, completed = line.get("total"), line.get("completed")
    if total and completed is not None:
        tenth = int(10 * completed / total)
        if shown.get(status) == tenth:
            return None
        shown[status] = tenth
        return f"{status}  {completed / 1e6:.0f}/{total / 1e6:.0f} MB ({100 * completed / total:.0f}%)"
    if status in shown:
        return None
    shown[status] = -1
    return status


def _follow(op: str, name: str, timeout: float) -> None:
    r = store.connect()
    shown: dict = {}
    try:
        op_id = model_ops.request(r, op, name)
        for line in model_ops.follow(r, op_id, timeout):
            text = _progress_text(line, shown)
            if text:
                click.echo(text)
    except model_ops.ModelOpError as exc:
        raise click.ClickException(exc.message) from None
    except TimeoutError:
        model_ops.withdraw(r, op_id)
        raise click.ClickException(f"{op} {name}: nothing heard from the leader or the node within {timeout:.0f}s "
                                   "(is a gpu-broker running? mm check)") from None


@models.command()
@click.argument("name")
@click.option("--timeout", default=600.0, show_default=True, help="Give up after this many seconds without progress.")
def pull(name: str, timeout: float) -> None:
    """Pull model NAME into a node's runtime (through the leader), showing progress; it is then registered."""
    _follow("pull", name, timeout)
    click.echo(f"{name} pulled and registered")


@models.command()
@click.argument("name")
@click.option("--timeout", default=60.0, show_default=True, help="Give up after this many seconds without an answer.")
def delete(name: str, timeout: float) -> None:
    """Delete model NAME from every runtime that lists it; refused while it is resident or has jobs queued."""
    _follow("delete", name, timeout)
    click.echo(f"{name} deleted")
