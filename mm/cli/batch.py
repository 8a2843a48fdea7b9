"""``mm batch``: OpenAI's Batch API on the gateway from the command line.

A thin client of ``/v1/files`` and ``/v1/batches``: the files live with the gateway, so this
command talks HTTP to it (``--url``, ``MM_GATEWAY_URL``), never to Redis.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx

from mm.settings import Settings
from mm.settings import get as get_settings

FINAL = ("completed", "failed", "expired", "cancelled")
POLL_S = 1.0
BAR_WIDTH = 30


# --- pure helpers ------------------------------------------------------------------------------

def default_url(settings: Settings) -> str:
    """``MM_GATEWAY_URL``, else the address ``mm gateway`` listens on (a wildcard address as localhost)."""
    if settings.gateway_url:
        return settings.gateway_url.rstrip("/")
    host = settings.gateway_host
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "[::1]" if host == "::" else host
    return f"http://{host}:{settings.gateway_port}"


def default_key(settings: Settings) -> str | None:
    """``MM_API_KEY``, else the first of ``MM_GATEWAY_API_KEYS`` (a CLI on the gateway's host), else None."""
    if settings.api_key:
        return settings.api_key
    keys = [k.strip() for k in settings.gateway_api_keys.split(",") if k.strip()]
    return keys[0] if keys else None


def error_message(status: int, text: str) -> str:
    """One line from a gateway error: OpenAI's ``{"error": {"message", "code"}}``, mm's ``{"error": "..."}``."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        code = f" ({error['code']})" if error.get("code") else ""
        return f"the gateway answered {status}: {error['message']}{code}"
    if isinstance(error, str) and error:
        return f"the gateway answered {status}: {error}"
    return f"the gateway answered {status}: {' '.join(text.split())[:200] or 'no body'}"


def first_endpoint(data: bytes) -> str | None:
    """The ``url`` of the file's first non-blank line, if it is JSON with a string ``url``."""
    for raw in data.splitlines():
        if raw.strip():
            try:
                line = json.loads(raw)
            except ValueError:
                return None
            url = line.get("url") if isinstance(line, dict) else None
            return url if isinstance(url, str) else None
    return None


def parse_meta(pairs: tuple[str, ...]) -> dict[str, str]:
    """``k=v`` pairs as a dict; a pair without ``=`` or with an empty key is a usage error."""
    meta = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{pair!r} is not k=v", param_hint="--meta")
        meta[key] = value
    return meta


def errors_path(out: Path) -> Path:
    """Where the error file goes beside ``--out``: ``results.jsonl`` -> ``results.errors.jsonl``."""
    return out.with_name((out.stem if out.suffix == ".jsonl" else out.name) + ".errors.jsonl")


def done_total(batch: dict[str, Any]) -> tuple[int, int]:
    counts = batch.get("request_counts") or {}
    return int(counts.get("completed", 0)) + int(counts.get("failed", 0)), int(counts.get("total", 0))


def progress_line(batch: dict[str, Any], width: int = BAR_WIDTH) -> str:
    """``[█████░░░░░] 12/40 in_progress, 1 failed``: one line of a batch's progress."""
    done, total = done_total(batch)
    filled = min(width, round(width * done / total)) if total else 0
    failed = (batch.get("request_counts") or {}).get("failed", 0)
    return (f"[{'█' * filled}{'░' * (width - filled)}] {done}/{total or '?'} {batch['status']}"
            + (f", {failed} failed" if failed else ""))


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def batch_errors(batch: dict[str, Any]) -> list[str]:
    """A failed batch's errors, one readable line each: ``line 3: model_not_found: unknown model``."""
    data = (batch.get("errors") or {}).get("data") or []
    return [(f"line {e['line']}: " if e.get("line") else "") + f"{e.get('code') or 'error'}: {e.get('message')}"
            for e in data]


def summary(batch: dict[str, Any]) -> list[str]:
    """``mm batch status``: the batch in a few lines."""
    done, total = done_total(batch)
    counts = batch.get("request_counts") or {}
    lines = [f"{batch['id']}  {batch['status']}  {batch['endpoint']}",
             f"  requests   {done}/{total} done: {counts.get('completed', 0)} completed, "
             f"{counts.get('failed', 0)} failed",
             f"  created    {when(batch.get('created_at'))}  (window {batch.get('completion_window')}, "
             f"expires {when(batch.get('expires_at'))})"]
    for name in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"):
        if batch.get(f"{name}_at"):
            lines.append(f"  {name:<10} {when(batch[f'{name}_at'])}")
    lines.append(f"  input      {batch.get('input_file_id')}")
    for label, key in (("output", "output_file_id"), ("errors", "error_file_id")):
        if batch.get(key):
            lines.append(f"  {label:<10} {batch[key]}")
    if batch.get("metadata"):
        lines.append("  metadata   " + " ".join(f"{k}={v}" for k, v in batch["metadata"].items()))
    lines += ["  " + line for line in batch_errors(batch)]
    return lines


def table(batches: list[dict[str, Any]]) -> list[str]:
    """``mm batch list``: id, status, endpoint, done/total and creation time, one batch a row."""
    rows = [("ID", "STATUS", "ENDPOINT", "DONE", "CREATED")]
    for b in batches:
        done, total = done_total(b)
        rows.append((b["id"], b["status"], b["endpoint"], f"{done}/{total}", when(b.get("created_at"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


# --- the gateway -------------------------------------------------------------------------------

@dataclass
class Client:
    """The gateway's ``/v1`` API; every failure is a one-line ``click.ClickException``."""

    url: str
    api_key: str | None
    timeout_s: float = 120.0

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            resp = httpx.request(method, self.url + path, headers=headers, timeout=self.timeout_s, **kwargs)
        except httpx.ConnectError:
            raise click.ClickException(
                f"the gateway at {self.url} is not answering: start it with `mm gateway`, or point --url "
                "(MM_GATEWAY_URL) at a running one") from None
        except httpx.HTTPError as exc:
            raise click.ClickException(f"the gateway at {self.url} failed: {exc!r}") from None
        if resp.status_code >= 400:
            raise click.ClickException(error_message(resp.status_code, resp.text))
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self.call(method, path, **kwargs).json()

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self.json("GET", f"/v1/batches/{batch_id}")

    def content(self, file_id: str) -> bytes:
        return self.call("GET", f"/v1/files/{file_id}/content").content


# --- commands ----------------------------------------------------------------------------------

@click.group()
@click.option("--url", default=None, help="The gateway (default MM_GATEWAY_URL, else "
                                          "http://MM_GATEWAY_HOST:MM_GATEWAY_PORT).")
@click.option("--api-key", default=None, help="Bearer key (default MM_API_KEY, else the first of "
                                              "MM_GATEWAY_API_KEYS).")
@click.pass_context
def batch(ctx: click.Context, url: str | None, api_key: str | None) -> None:
    """OpenAI-style batches on the gateway: submit a JSONL file of requests, follow it, read its results."""
    settings = get_settings()
    ctx.obj = Client((url or default_url(settings)).rstrip("/"), api_key or default_key(settings))


@batch.command()
@click.argument("requests", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--endpoint", default=None, help="/v1/chat/completions, /v1/completions or /v1/embeddings "
                                               "(default: the url of the file's first line).")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default=None,
              help="Priority of the batch's jobs (default low).")
@click.option("--window", default="24h", show_default=True, help="Completion window: the batch expires after it.")
@click.option("--meta", multiple=True, metavar="K=V", help="Metadata to attach (repeatable).")
@click.option("--wait", is_flag=True, help="Follow the batch to its end, then write its output.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --wait: write the output file here (default stdout); errors go beside it "
                   "as <name>.errors.jsonl.")
@click.pass_obj
def submit(gw: Client, requests: Path, endpoint: str | None, priority: str | None, window: str,
           meta: tuple[str, ...], wait: bool, out: Path | None) -> None:
    """Upload REQUESTS (JSONL, one OpenAI request a line) and create a batch on it; print its id."""
    metadata = parse_meta(meta) | ({"priority": priority} if priority else {})
    data = requests.read_bytes()
    endpoint = endpoint or first_endpoint(data)
    if endpoint is None:
        raise click.UsageError(f"cannot tell the endpoint: the first line of {requests} has no url; pass --endpoint")
    uploaded = gw.json("POST", "/v1/files", data={"purpose": "batch"},
                       files={"file": (requests.name, data, "application/jsonl")})
    created = gw.json("POST", "/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": endpoint,
                                                   "completion_window": window, "metadata": metadata or None})
    if not wait:
        click.echo(created["id"])
        return
    click.echo(f"batch {created['id']} created from {requests} ({uploaded['bytes']} bytes)", err=True)
    final = follow(gw, created["id"])
    sys.exit(finish(gw, final, out))


def follow(gw: Client, batch_id: str, poll_s: float = POLL_S) -> dict[str, Any]:
    """Poll the batch until it is final, drawing its progress on stderr; Ctrl-C stops waiting (exit 130)."""
    tty = sys.stderr.isatty()
    shown = ""
    try:
        while True:
            current = gw.batch(batch_id)
            line = progress_line(current)
            if line != shown:
                click.echo(f"\r{line}\033[K" if tty else line, err=True, nl=not tty)
                shown = line
            if current["status"] in FINAL:
                if tty:
                    click.echo("", err=True)
                return current
            time.sleep(poll_s)
    except KeyboardInterrupt:
        click.echo(f"\nstopped waiting; the batch goes on: mm batch status {batch_id}", err=True)
        sys.exit(130)


def finish(gw: Client, final: dict[str, Any], out: Path | None) -> int:
    """Write a final batch's output (to ``out`` or stdout) and error file; say where; the exit status."""
    batch_id, status = final["id"], final["status"]
    if final.get("output_file_id"):
        data = gw.content(final["output_file_id"])
        if out is None:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            out.write_bytes(data)
            click.echo(f"output: {out} ({len(data.splitlines())} answers)", err=True)
    if final.get("error_file_id"):
        if out is None:
            click.echo(f"errors: some requests failed; read them with `mm batch results {batch_id} --errors`",
                       err=True)
        else:
            errors = gw.content(final["error_file_id"])
            errors_path(out).write_bytes(errors)
            click.echo(f"errors: {errors_path(out)} ({len(errors.splitlines())} failed requests)", err=True)
    if status == "completed":
        return 0
    click.echo(f"batch {batch_id} {status}", err=True)
    for line in batch_errors(final):
        click.echo(f"  {line}", err=True)
    return 1


@batch.command()
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print the batch object as the API returns it.")
@click.pass_obj
def status(gw: Client, batch_id: str, as_json: bool) -> None:
    """Show a batch: status, request counts, times, files and errors."""
    found = gw.batch(batch_id)
    click.echo(json.dumps(found, indent=2) if as_json else "\n".join(summary(found)))


@batch.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="Most batches shown.")
@click.pass_obj
def list_(gw: Client, limit: int) -> None:
    """The newest batches, one a row."""
    found = gw.json("GET", "/v1/batches", params={"limit": limit})["data"]
    click.echo("\n".join(table(found)) if found else "no batch yet")


@batch.command()
@click.argument("batch_id")
@click.pass_obj
def cancel(gw: Client, batch_id: str) -> None:
    """Cancel a batch: its queued requests are dropped, running ones finish."""
    found = gw.json("POST", f"/v1/batches/{batch_id}/cancel")
    click.echo(f"{found['id']} {found['status']}")


@batch.command()
@click.argument("batch_id")
@click.option("--errors", is_flag=True, help="The error file (failed, cancelled and expired requests) instead.")
@click.pass_obj
def results(gw: Client, batch_id: str, errors: bool) -> None:
    """Write a batch's output (or error) file to stdout, e.g. mm batch results ID > out.jsonl."""
    found = gw.batch(batch_id)
    key = "error_file_id" if errors else "output_file_id"
    if not found.get(key):
        if found["status"] not in FINAL:
            raise click.ClickException(f"batch {batch_id} is {found['status']}: its files come when it ends "
                                       f"(mm batch status {batch_id})")
        raise click.ClickException(f"batch {batch_id} ({found['status']}) has no {'error' if errors else 'output'} "
                                   "file")
    sys.stdout.buffer.write(gw.content(found[key]))
    sys.stdout.flush()
