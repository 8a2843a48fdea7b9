"""``mm jobs``: follow and cancel jobs, list dead letters and requeue them."""

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
@click.argument("job_id")
@click.option("--reason", default="cancelled from the command line", show_default=True,
              help="Kept in the job's record.")
@click.option("--wait", type=float, default=5.0, show_default=True, help="Seconds to wait for a running job to stop.")
def cancel(job_id: str, reason: str, wait: float) -> None:
    """Cancel a job: a queued one never runs, a running one is stopped; both end cancelled."""
    import mm
    from mm.errors import UnknownJob

    job = mm.Job(job_id)
    try:
        cancelled = job.cancel(reason, wait=wait)
    except UnknownJob as exc:
        raise click.ClickException(str(exc)) from None
    status = job.status()
    if not cancelled:
        raise click.ClickException(f"job {job_id} has ended ({status}); nothing was cancelled")
    click.echo(f"cancelled {job_id}" if status == "cancelled" else f"cancelling {job_id} (still {status})")


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
