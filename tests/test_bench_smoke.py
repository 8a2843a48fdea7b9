"""Each benchmark in bench/ runs end to end with tiny sizes (--smoke) and prints its HEADLINE line.

Not a timed test: the numbers of a smoke run mean nothing; what is checked is that every script
starts what it needs, measures, stops everything it started and reports. The scripts run
at once (module fixture) so that the whole file takes about as long as the slowest of them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ("schedule", "scale", "overhead", "live", "fleet", "cache", "batch")
NUMBER = r"\d+(\.\d+)?"


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Start every bench with --smoke at once; yield script -> (Popen, stdout path)."""
    out_dir = tmp_path_factory.mktemp("bench-smoke")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    runs = {}
    for name in SCRIPTS:
        log = out_dir / f"{name}.out"
        with open(log, "wb") as fh:
            runs[name] = (subprocess.Popen([sys.executable, "-m", f"bench.{name}", "--smoke"], cwd=REPO, env=env,
                                           stdout=fh, stderr=subprocess.STDOUT, start_new_session=True), log)
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:  # SIGTERM first: a bench then stops the processes it started
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def finished(smoke_runs, name: str) -> str:
    proc, log = smoke_runs[name]
    proc.wait(timeout=300)
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, f"bench.{name} --smoke exited {proc.returncode}:\n{output[-4000:]}"
    return output


def headline(output: str, name: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(f"HEADLINE {name}:")]
    assert len(lines) == 1, f"expected one 'HEADLINE {name}:' line, got {lines}:\n{output[-4000:]}"
    return lines[0]


def test_schedule_compares_mm_with_the_baselines_on_every_trace(smoke_runs):
    output = finished(smoke_runs, "schedule")

    line = headline(output, "schedule")
    for trace in ("alt-ab", "zipf", "bursts", "replay", "team-day"):
        assert re.search(rf"{trace} {NUMBER}x", line), line
        assert re.search(rf"refused ollama-default/ollama-tuned/mm .*{trace} \d+/\d+/\d+", line), line
        for scheduler in ("mm", "ollama-default", "ollama-tuned", "naive-fifo", "lower-bound"):
            assert f"{trace}/{scheduler}" in output
    assert re.search(rf"team-day interactive p99 ollama-tuned/mm {NUMBER}x", line), line


def test_scale_times_plan_and_measures_redis_memory_per_job(smoke_runs):
    output = finished(smoke_runs, "scale")

    line = headline(output, "scale")
    assert re.search(rf"plan\(\) worst median {NUMBER} ms", line), line
    assert re.search(r"Redis \d+ B per queued job", line), line


def test_overhead_measures_direct_celery_and_mm_round_trips(smoke_runs):
    output = finished(smoke_runs, "overhead")

    line = headline(output, "overhead")
    assert re.search(rf"mm's own part \(c-d\)/b p50 -?{NUMBER} \(target <= 0.2\)", line), line
    assert re.search(rf"throughput @64 clients {NUMBER}x", line), line
    assert re.search(rf"Redis commands per job {NUMBER} \(target <= 24\)", line), line
    assert re.search(rf"floor \(celery\+runtime-direct\)/celery -?{NUMBER}x", line), line
    for path in ("(a) direct runtime", "(b) bare celery", "(c) mm job", "(d) celery + runtime"):
        assert path in output


def test_live_runs_a_trace_through_the_stack_and_the_ollama_baseline(smoke_runs):
    output = finished(smoke_runs, "live")

    line = headline(output, "live")
    assert re.search(rf"mm live/simulated makespan {NUMBER}", line), line
    assert "ollama-default live/mm live" in line and "ollama-tuned live/mm live" in line
    assert "logs kept" not in output  # it stopped everything it started and cleaned up


def test_fleet_compares_mm_on_many_gpus_with_round_robin_ollamas(smoke_runs):
    output = finished(smoke_runs, "fleet")

    line = headline(output, "fleet")
    for trace in ("fleet-zipf", "fleet-burst"):
        for row in ("tuned", "default"):
            assert re.search(rf"{trace} throughput mm/ollama-8x4-rr-{row} {NUMBER}x", line), line
            assert re.search(rf"{trace} .*p99 ollama-8x4-rr-{row}/mm {NUMBER}x, loads ollama-8x4-rr-{row}/mm {NUMBER}x",
                             line), line
        assert re.search(rf"refused: .*{trace} \d+/\d+/\d+/\d+/\d+", line), line
        for scheduler in ("mm", "ollama-8x4-rr-default", "ollama-8x4-rr-tuned", "ollama-32x1-rr-tuned"):
            assert f"{trace}/{scheduler}" in output
    assert re.search(rf"sweep at {NUMBER} jobs/s: sustained mm {NUMBER}", line), line
    assert "32 mm nodes" in output


def test_cache_measures_gpu_seconds_with_the_result_cache_off_and_on(smoke_runs):
    output = finished(smoke_runs, "cache")

    line = headline(output, "cache")
    assert re.search(rf"\d+/\d+ jobs \({NUMBER}%\) answered from the cache", line), line
    assert re.search(rf"GPU seconds {NUMBER} off -> {NUMBER} on, ratio on/off {NUMBER}", line), line
    assert "cache off" in output and "cache on" in output
    assert "logs kept" not in output


def test_batch_runs_a_batch_through_the_gateway_with_a_worker_and_the_leader_killed(smoke_runs):
    output = finished(smoke_runs, "batch")

    line = headline(output, "batch")
    assert re.search(rf"500 requests accepted in {NUMBER} s", line), line
    assert re.search(rf"makespan {NUMBER} s = {NUMBER}x the lower bound", line), line
    assert "model-worker SIGKILLed" in output and "gpu-broker SIGKILLed" in output
    assert "logs kept" not in output
