"""``mm top``: a live terminal view of the cluster (the status page's data, read from Redis)."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any

import click
import redis

from mm import store
from mm.gateway import status
from mm.settings import get as get_settings


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _secs(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


def _bar(used: int, total: int, width: int) -> str:
    filled = 0 if not total else min(width, round(width * used / total))
    return "[" + click.style("█" * filled, fg="cyan") + "░" * (width - filled) + "]"


def frame(stats: dict[str, Any], jobs: dict[str, Any], width: int = 100) -> str:
    """One screen of text (ANSI styles included; click drops them when not writing to a terminal)."""
    out: list[str] = []
    lead = stats["leader"]["owner"] or click.style("no leader", fg="red")
    out.append(click.style("mm top", bold=True) + f"  leader {lead}  ·  " +
               time.strftime("%H:%M:%S", time.localtime(stats["at"])))
    b, w = stats["queue"]["by_status"], stats["workers"]
    window = int(stats["queue"]["finished_window_s"] // 60)
    failed = click.style(str(b["failed"]), fg="red") if b["failed"] else "0"
    complete = click.style(str(b["complete"]), fg="green")
    out.append(f"jobs  queued {b['queued']}  running {b['running']}  complete {complete}"
               f"  failed {failed}  (finished in the last {window} min)")
    out.append(f"workers {w['total']} ({w['bound']} bound, {w['busy']}/{w['slots']} slots busy"
               + (f", {len(w['gone'])} lost" if w["gone"] else "") + ")")
    out.append("")
    out.append(click.style("NODES", bold=True))
    bar_width = max(10, min(40, width - 60))
    nodes = stats["resources"]["nodes"]
    if not nodes:
        out.append("  (no node publishes its state)")
    for n in nodes:
        m = n["memory"]
        up = click.style("up", fg="green") if n["runtime_up"] else click.style("DOWN", fg="red")
        out.append(f"  {click.style(n['node'], bold=True)}  runtime {up}  {m['source']}  "
                   f"{_bar(m['used'], m['total'], bar_width)} {_gb(m['used'])} / {_gb(m['total'])}")
        for g in m["gpus"]:
            out.append(f"    GPU {g['index']} {g['name'][:24]:24} {_bar(g['used'], g['total'], bar_width)} "
                       f"{_gb(g['used'])} / {_gb(g['total'])}")
        for r in n["resident"]:
            workers = ", ".join(r["workers"]) or "no worker bound"
            out.append(f"    {r['model']:28} {_gb(r['size']):>9}  running {r['in_flight']:<3} workers {workers}")
        for model, op in n["operations"].items():
            out.append(f"    {model:28} " + click.style(f"{op.get('op', '')}ing…", fg="yellow"))
        idle = [x["hostname"] for x in n["workers"] if not x["bound"]]
        if idle:
            out.append(f"    idle workers: {', '.join(idle)}")
    out.append("")
    out.append(click.style(f"{'QUEUES':30} {'high':>6} {'normal':>7} {'low':>6} {'oldest':>9} {'done':>6} "
                           f"{'failed':>7}", bold=True))
    for model, q in stats["queues"].items():
        fin = stats["finished"].get(model, {"ok": 0, "error": 0})
        out.append(f"{model:30} {q['high']:>6} {q['normal']:>7} {q['low']:>6} "
                   f"{_secs(q['oldest_wait_s']) if q['total'] else '-':>9} {fin['ok']:>6} {fin['error']:>7}")
    out.append("")
    out.append(click.style("RUNNING", bold=True) + f" ({len(jobs['running'])})")
    for j in jobs["running"][:8]:
        out.append(f"  {j['job_id'][:8]}  {j['model']:24} {j['worker']:16} {_secs(j['running_s'])}")
    out.append(click.style("RECENT", bold=True))
    for s in jobs["finished"][:8]:
        state = click.style("ok", fg="green") if s["status"] == "ok" else click.style(s["error"] or "error", fg="red")
        out.append(f"  {time.strftime('%H:%M:%S', time.localtime(s['at']))}  {s['model']:24} {state:>4}  "
                   f"{_secs(s['latency_s']):>8}  {s['tokens_per_s']:.0f} t/s")
    out.append("")
    firing = stats["alerts"]["firing"]
    out.append(click.style("ALERTS", bold=True) + (f" ({len(firing)} firing)" if firing else ": none firing"))
    for a in firing:
        subject = " ".join(f"{k}={v}" for k, v in a.get("subject", {}).items())
        out.append(click.style(f"  {a.get('text') or a.get('rule')}  {subject}  value {a.get('value')}", fg="red"))
    return "\n".join(out)


@click.command()
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and tests).")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.1, 60),
              help="Seconds between frames.")
def top(once: bool, interval: float) -> None:
    """A live view of nodes, memory, resident models, queues, running jobs and alerts."""
    r = store.connect()
    settings = get_settings()
    try:
        r.ping()
    except redis.RedisError as exc:
        raise click.ClickException(f"no Redis at MM_REDIS_URL ({exc})") from None
    width = shutil.get_terminal_size((100, 40)).columns
    if once:
        click.echo(frame(status.stats(r, settings), status.recent_jobs(r, 8), width))
        return
    try:
        while True:
            text = frame(status.stats(r, settings), status.recent_jobs(r, 8), shutil.get_terminal_size().columns)
            sys.stdout.write("\x1b[H" + text.replace("\n", "\x1b[K\n") + "\x1b[K\n\x1b[J")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
