"""``mm jobs``: follow jobs, list dead letters and requeue them."""

from __future__ import annotations

import json

import click


@click.group()
def jobs() -> None:
    """Inspect jobs and dead letters."""


@jobs.command()
@click.argument("job_id")
def status(job_id: str) -> None:
    """Print a job's record (model, priority, status, times, node, error)."""
    import mm

    record = mm.Job(job_id).record()
    if not record:
        raise click.ClickException(f"no job {job_id} (unknown, expired or lost)")
    click.echo(json.dumps(record, indent=1))


@jobs.command()
def failed() -> None:
    """List jobs that exhausted their deliveries, with their reasons."""
    from mm import deadletters

    letters = deadletters.listing()
    for letter in letters:
        click.echo(f"{letter['id']}  {letter['model']}  {letter['reason']}")
    if not letters:
        click.echo("no dead-lettered jobs")


@jobs.command()
@click.argument("job_id")
def retry(job_id: str) -> None:
    """Requeue a dead-lettered job (same id, fresh delivery count)."""
    from mm import deadletters

    try:
        job = deadletters.retry(job_id)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    click.echo(f"requeued {job.id}")
