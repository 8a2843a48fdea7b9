"""``mm logs JOB_ID``: one job's path through mm, in time order, from Redis."""

from __future__ import annotations

import json
import time

import click


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per step.")
def logs(job_id: str, as_json: bool) -> None:
    """What every component recorded about JOB_ID: submission, loads, start, end, faults on its way."""
    from mm import job_trail, store

    steps = job_trail.read(store.connect(), job_id, time.time())
    if steps is None:
        raise click.ClickException(f"no job {job_id} (unknown, expired or lost)")
    first = steps[0].at
    for step in steps:
        if as_json:
            click.echo(json.dumps(step.as_dict()))
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(step.at)) + f".{int(step.at * 1000) % 1000:03d}"
            click.echo(f"{stamp} +{step.at - first:.3f}s {step.component:<9} {step.text}")
