"""``mm alerts``: alerts firing now, conditions pending, and recent firing/clearing."""

from __future__ import annotations

import json
import time

import click

from mm import alerts as alerts_lib
from mm import store
from mm.errors import ValidationError
from mm.settings import get as get_settings


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _subject(subject: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in subject.items())


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@click.command()
@click.option("--count", "-n", default=20, show_default=True, help="Recent transitions to show.")
@click.option("--rules", "show_rules", is_flag=True, help="Print the configured rules (MM_ALERT_RULES) and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def alerts(count: int, show_rules: bool, as_json: bool) -> None:
    """Alerts firing now, pending conditions and the most recent transitions."""
    settings = get_settings()
    if show_rules:
        try:
            rules = alerts_lib.rules(settings)
        except ValidationError as exc:
            raise click.ClickException(str(exc)) from None
        for rule in rules:
            click.echo(f"{rule.id}    ({rule.describe()})")
        return
    r = store.connect()
    firing, pending, recent = alerts_lib.firing(r), alerts_lib.pending(r), alerts_lib.recent(r, count)
    if as_json:
        click.echo(json.dumps({"firing": firing, "pending": pending, "recent": recent}, indent=1))
        return
    click.echo(f"firing ({len(firing)}):")
    for a in firing:
        click.echo(f"  {a['rule']}  {_subject(a['subject'])}  value {_value(a['value'])}  since {_when(a['fired_at'])}")
    if pending:
        click.echo(f"pending ({len(pending)}):")
        for a in pending:
            click.echo(f"  {a['rule']}  {_subject(a['subject'])}  value {_value(a['value'])}  "
                       f"holding since {_when(a['since'])}")
    click.echo(f"recent ({len(recent)}):")
    for a in recent:
        click.echo(f"  {_when(a['at'])}  {a['state'].upper():8} {a['rule']}  {_subject(a['subject'])}  "
                   f"value {_value(a['value'])}")
