"""The runtime's scheduler on the sim engine: memory budget, evict modes, slots, timings, text.

Sim timings are exact by construction (asyncio sleeps on an absolute schedule), so these tests
can hold the runtime to the numbers in the models file.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.procs import wait_for
from tests.runtime_server import RuntimeProc, start_runtime
from tests.support import GB, sim_model

FAST = {"load_bandwidth": 10 * GB, "prompt_rate": 5000, "eval_rate": 500, "parallel": 4}


def sim(name: str, **fields: Any) -> dict[str, Any]:
    """A fast sim model: 1 GB loading in 0.1 s, 5000 prompt tok/s, 500 tok/s, 4 slots."""
    return sim_model(name, **(FAST | fields))


@pytest.fixture
def runtimes(tmp_path: Path):
    """Start runtimes with ``runtimes(models=..., memory=..., evict=...)``; all stopped afterwards."""
    started: list[RuntimeProc] = []

    def start(**kwargs: Any) -> RuntimeProc:
        runtime = start_runtime(tmp_path, **kwargs)
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        runtime.stop()


def client(runtime: RuntimeProc) -> ollama.Client:
    return ollama.Client(host=runtime.url, timeout=60)


def resident(runtime: RuntimeProc) -> set[str]:
    return {m.model for m in client(runtime).ps().models}


def end_time(reply: ollama.GenerateResponse) -> float:
    return datetime.fromisoformat(reply.created_at.replace("Z", "+00:00")).timestamp()


def queue(runtime: RuntimeProc) -> dict[str, Any]:
    """The runtime's GET /mm/queue: requests waiting for a load, and each resident model's slots."""
    return httpx.get(f"{runtime.url}/mm/queue", timeout=10).json()


def slots(runtime: RuntimeProc, model: str) -> dict[str, Any]:
    """``model``'s slots (``running``, ``parallel``, ``waiting``) and ``state``; empty when it is not resident."""
    return queue(runtime)["models"].get(model, {})


# -- memory budget ------------------------------------------------------------------------------

def test_a_load_that_does_not_fit_fails_with_out_of_memory_and_evicts_nothing(runtimes) -> None:
    rt = runtimes(models=[sim("sim-a:1b"), sim("sim-b:1b")], memory=int(1.5 * GB))
    client(rt).generate("sim-a:1b", "", keep_alive="1h")

    with pytest.raises(ollama.ResponseError) as caught:
        client(rt).generate("sim-b:1b", "hello")

    assert caught.value.status_code == 500
    assert re.fullmatch(r"model requires more system memory \(953\.7 MiB\) than is available \(476\.8 MiB\)",
                        caught.value.error), caught.value.error
    assert resident(rt) == {"sim-a:1b"}
    assert "evicted" not in rt.output()


def test_a_model_larger_than_the_whole_budget_fails_in_both_modes(runtimes) -> None:
    for evict in ("none", "ollama"):
        rt = runtimes(models=[sim("sim-huge:70b", size=40 * GB)], memory=8 * GB, evict=evict)

        with pytest.raises(ollama.ResponseError) as caught:
            client(rt).generate("sim-huge:70b", "hello")

        assert caught.value.status_code == 500 and "requires more system memory" in caught.value.error


def test_evict_ollama_unloads_an_idle_model_to_load_the_new_one(runtimes) -> None:
    rt = runtimes(models=[sim("sim-a:1b"), sim("sim-b:1b")], memory=int(1.5 * GB), evict="ollama")
    client(rt).generate("sim-a:1b", "", keep_alive="1h")

    reply = client(rt).generate("sim-b:1b", "hello", options={"num_predict": 3})

    assert reply.done and reply.eval_count == 3
    assert resident(rt) == {"sim-b:1b"}
    assert "unload model=sim-a:1b reason=evicted for sim-b:1b" in rt.output()


def test_evict_ollama_picks_the_idle_model_with_the_shortest_keep_alive(runtimes) -> None:
    names = ["sim-a:1b", "sim-b:1b", "sim-c:1b"]
    rt = runtimes(models=[sim(n) for n in names], memory=int(2.5 * GB), evict="ollama")
    client(rt).generate("sim-a:1b", "", keep_alive="1h")
    client(rt).generate("sim-b:1b", "", keep_alive="10m")

    client(rt).generate("sim-c:1b", "")

    assert resident(rt) == {"sim-a:1b", "sim-c:1b"}


def test_evict_ollama_waits_for_a_busy_model_instead_of_failing(runtimes) -> None:
    slow = sim("sim-a:1b", eval_rate=20)  # 20 tokens take 1 s
    rt = runtimes(models=[slow, sim("sim-b:1b")], memory=int(1.5 * GB), evict="ollama")
    client(rt).generate("sim-a:1b", "")
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(client(rt).generate, "sim-a:1b", "long answer", options={"num_predict": 20})
        wait_for(lambda: slots(rt, "sim-a:1b")["running"] == 1, timeout=10, what="sim-a:1b to run the long answer")

        waiting = client(rt).generate("sim-b:1b", "hi", options={"num_predict": 2})
        first = busy.result()

    assert first.done and waiting.done
    assert end_time(waiting) > end_time(first)
    assert waiting.load_duration > 0.5e9  # queued behind the busy model, then loaded
    assert resident(rt) == {"sim-b:1b"}


def test_evict_ollama_serves_a_loaded_model_while_a_load_waits_for_it_to_drain(runtimes, monkeypatch) -> None:
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "2")
    slow = sim("sim-a:1b", eval_rate=20)  # 20 tokens take 1 s
    rt = runtimes(models=[slow, sim("sim-b:1b")], memory=int(1.5 * GB), evict="ollama")
    client(rt).generate("sim-a:1b", "")
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(client(rt).generate, "sim-a:1b", "long answer", options={"num_predict": 20})
        wait_for(lambda: slots(rt, "sim-a:1b")["running"] == 1, timeout=10, what="sim-a:1b to run the long answer")
        waiting = pool.submit(client(rt).generate, "sim-b:1b", "hi", options={"num_predict": 2})
        wait_for(lambda: queue(rt)["waiting_for_load"] == {"sim-b:1b": 1}, timeout=10, what="sim-b:1b to queue")

        joined = client(rt).generate("sim-a:1b", "short", options={"num_predict": 2})

        assert not waiting.done()
        assert joined.load_duration < 0.05e9  # straight to the loaded model, not behind b's load
        assert end_time(joined) < end_time(busy.result()) < end_time(waiting.result())


def test_evict_ollama_refuses_requests_past_ollama_max_queue_with_503(runtimes, monkeypatch) -> None:
    monkeypatch.setenv("OLLAMA_MAX_QUEUE", "1")
    names = ["sim-a:1b", "sim-b:1b", "sim-c:1b"]
    rt = runtimes(models=[sim(n, load_bandwidth=GB) for n in names], memory=8 * GB, evict="ollama")  # 1 s loads
    with ThreadPoolExecutor(2) as pool:
        loading = pool.submit(client(rt).generate, "sim-a:1b", "hi", options={"num_predict": 1})
        wait_for(lambda: slots(rt, "sim-a:1b").get("state") == "loading", timeout=10, what="sim-a:1b to load")
        queued = pool.submit(client(rt).generate, "sim-b:1b", "hi", options={"num_predict": 1})
        wait_for(lambda: queue(rt)["waiting_for_load"] == {"sim-b:1b": 1}, timeout=10, what="sim-b:1b to queue")

        with pytest.raises(ollama.ResponseError) as caught:
            client(rt).generate("sim-c:1b", "hi", options={"num_predict": 1})

        assert loading.result().done and queued.result().done
    assert caught.value.status_code == 503
    assert caught.value.error == "server busy, please try again.  maximum pending requests exceeded"


def test_evict_ollama_runs_one_request_at_a_time_per_model_unless_ollama_num_parallel_says(runtimes,
                                                                                           monkeypatch) -> None:
    monkeypatch.delenv("OLLAMA_NUM_PARALLEL", raising=False)
    models = [sim("sim-a:1b", eval_rate=50, parallel=4)]
    for setting, expected in ((None, "running=1/1"), ("3", "running=2/3")):
        if setting:
            monkeypatch.setenv("OLLAMA_NUM_PARALLEL", setting)
        rt = runtimes(models=models, evict="ollama")
        client(rt).generate("sim-a:1b", "")

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda i, rt=rt: client(rt).generate("sim-a:1b", f"request {i}", options={"num_predict": 25}),
                          range(2)))

        assert expected in rt.output(), rt.output()[-2000:]


# -- keep_alive ---------------------------------------------------------------------------------

def test_keep_alive_counts_from_the_end_of_the_last_request(runtimes) -> None:
    rt = runtimes(models=[sim("sim-a:1b", eval_rate=20)])
    client(rt).generate("sim-a:1b", "", keep_alive="1s")

    client(rt).generate("sim-a:1b", "take a while", options={"num_predict": 30}, keep_alive="1s")  # 1.5 s
    ended = time.monotonic()

    assert "sim-a:1b" in resident(rt)
    wait_for(lambda: "sim-a:1b" not in resident(rt), timeout=5, what="expiry")
    assert time.monotonic() - ended >= 0.9


def test_a_different_num_ctx_reloads_the_model(runtimes) -> None:
    rt = runtimes(models=[sim("sim-a:1b", load_bandwidth=2 * GB)])  # 0.5 s loads
    client(rt).generate("sim-a:1b", "", options={"num_ctx": 2048})
    assert [m.context_length for m in client(rt).ps().models] == [2048]

    same = client(rt).generate("sim-a:1b", "hi", options={"num_ctx": 2048, "num_predict": 1})
    changed = client(rt).generate("sim-a:1b", "hi", options={"num_ctx": 8192, "num_predict": 1})

    assert same.load_duration < 0.1e9
    assert changed.load_duration >= 0.45e9
    assert [m.context_length for m in client(rt).ps().models] == [8192]
    assert "reason=reload with num_ctx 8192" in rt.output()


# -- slots and timings --------------------------------------------------------------------------

def test_fifty_requests_over_five_models_keep_to_each_models_slots(runtimes) -> None:
    # Given five models with 2 slots each, loads of 0.4-0.8 s and requests of exactly 0.2 s eval
    models = [sim(f"sim-{i}:1b", size=(4 + i) * 100_000_000, load_bandwidth=GB, eval_rate=50,
                  prompt_rate=1000, parallel=2) for i in range(5)]
    rt = runtimes(models=models)
    jobs = [models[i % 5]["name"] for i in range(50)]

    # When all fifty arrive at once
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda m: (m, client(rt).generate(m, "count to ten", options={"num_predict": 10})),
                                jobs))

    # Then each model ran at most (and at some point exactly) two at once
    for spec in models:
        mine = [r for m, r in replies if m == spec["name"]]
        assert len(mine) == 10 and all(r.eval_count == 10 for r in mine)
        spans = [(end_time(r) - (r.prompt_eval_duration + r.eval_duration) / 1e9, end_time(r)) for r in mine]
        events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
        running = peak = 0
        for _, step in events:
            running += step
            peak = max(peak, running)
        assert peak == 2, (spec["name"], peak)
        # ten 0.21 s requests two at a time need at least five rounds
        busy = max(e for _, e in spans) - min(s for s, _ in spans)
        assert busy >= 5 * 0.21 * 0.95, (spec["name"], busy)
        # and the load took size / bandwidth, within 10 %, in the log and for the first request
        nominal = spec["size"] / spec["load_bandwidth"]
        took = re.findall(rf"load model={re.escape(spec['name'])} .* took=([0-9.]+)s", rt.output())
        first_wait = max(r.load_duration for r in mine) / 1e9
        assert len(took) == 1 and abs(float(took[0]) - nominal) <= 0.1 * nominal, (spec["name"], took, nominal)
        assert abs(first_wait - nominal) <= 0.1 * nominal, (spec["name"], first_wait, nominal)


def test_waiting_requests_get_a_slot_in_arrival_order(runtimes) -> None:
    rt = runtimes(models=[sim("sim-a:1b", parallel=1, eval_rate=50)])
    client(rt).generate("sim-a:1b", "")
    finished: list[int] = []
    lock = threading.Lock()

    def run(i: int) -> None:  # the first holds the one slot for 0.5 s, the others 0.1 s each
        client(rt).generate("sim-a:1b", f"request {i}", options={"num_predict": 25 if i == 0 else 5})
        with lock:
            finished.append(i)

    def arrived(count: int) -> bool:
        """``count`` requests are running, waiting for the slot or answered (never one counted twice)."""
        held = slots(rt, "sim-a:1b")
        with lock:
            return held["running"] + held["waiting"] + len(finished) >= count

    threads = [threading.Thread(target=run, args=(i,)) for i in range(5)]
    for i, thread in enumerate(threads):  # each starts once the one before it holds its place in line
        thread.start()
        wait_for(functools.partial(arrived, i + 1), timeout=10, what=f"request {i} to take or wait for the slot")
    for thread in threads:
        thread.join()

    assert finished == [0, 1, 2, 3, 4]


def test_reported_durations_are_the_simulated_ones(runtimes) -> None:
    rt = runtimes(models=[sim("sim-a:1b", prompt_rate=100, eval_rate=40)])
    client(rt).generate("sim-a:1b", "")

    started = time.monotonic()
    reply = client(rt).generate("sim-a:1b", "one two three four five", options={"num_predict": 20})
    wall = time.monotonic() - started

    assert reply.eval_count == 20 and reply.eval_duration == 500_000_000
    assert reply.prompt_eval_duration == round(reply.prompt_eval_count / 100 * 1e9)
    simulated = (reply.prompt_eval_duration + reply.eval_duration) / 1e9
    assert simulated <= wall  # the sim really takes its time
    # and not much more, by the runtime's own clock (the client's also counts its waits for a CPU on a busy machine)
    assert simulated <= reply.total_duration / 1e9 < simulated + 0.3


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _raw_stream(port: int, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST over HTTP/1.0 and read NDJSON lines until close: a client light enough to outpace the server."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(b"POST /api/generate HTTP/1.0\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    data = await reader.read(-1)
    writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    return [json.loads(line) for line in rest.splitlines() if line]


def test_the_sim_carries_hundreds_of_concurrent_streams_on_one_core(runtimes) -> None:
    # Given a model with 500 slots whose answers take 1 s of simulated eval
    rt = runtimes(models=[sim("sim-a:1b", parallel=500, eval_rate=20)])
    client(rt).generate("sim-a:1b", "")
    cpu_before = _cpu_seconds(rt.proc.pid)

    async def run_all() -> list[list[dict[str, Any]]]:
        bodies = [{"model": "sim-a:1b", "prompt": f"stream {i}", "options": {"num_predict": 20}} for i in range(400)]
        return await asyncio.gather(*(_raw_stream(rt.port, body) for body in bodies))

    # When 400 streams run at once
    streams = asyncio.run(run_all())
    server_cpu = _cpu_seconds(rt.proc.pid) - cpu_before

    # Then every stream got one line per token, on the simulated schedule (server timestamps)
    def stamp(frame: dict[str, Any]) -> float:
        return datetime.fromisoformat(frame["created_at"].replace("Z", "+00:00")).timestamp()

    assert all(len(lines) == 21 and lines[-1]["done"] and lines[-1]["eval_count"] == 20 for lines in streams)
    # First token .. final object: 19 x 50 ms. On a busy machine a late first token is followed by
    # the rest on time, which shortens that stream's window: most streams keep the schedule, none
    # gets its tokens all at once.
    windows = sorted(stamp(lines[-1]) - stamp(lines[0]) for lines in streams)
    assert 0.8 <= windows[len(windows) // 2] < 1.3 and windows[0] >= 0.3, (windows[0], windows[len(windows) // 2])
    # and they ran together, with the server using well under one core
    spans = [(stamp(ls[-1]) - (ls[-1]["prompt_eval_duration"] + ls[-1]["eval_duration"]) / 1e9, stamp(ls[-1]))
             for ls in streams]
    peak = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert peak >= 300, peak
    assert server_cpu < 2.0, server_cpu


# -- text ---------------------------------------------------------------------------------------

def test_text_is_deterministic_for_a_seed(runtimes) -> None:
    rt = runtimes(models=[sim("sim-a:1b")])

    def ask(seed: int) -> str:
        return client(rt).generate("sim-a:1b", "tell me a story", options={"seed": seed}).response

    assert ask(1) == ask(1)
    assert ask(1) != ask(2)


def test_num_predict_is_honoured_and_ends_with_length(runtimes) -> None:
    rt = runtimes(models=[sim("sim-a:1b")])

    reply = client(rt).generate("sim-a:1b", "go on", options={"num_predict": 7, "seed": 3})
    parts = list(client(rt).generate("sim-a:1b", "go on", options={"num_predict": 7, "seed": 3}, stream=True))
    free = client(rt).generate("sim-a:1b", "go on", options={"seed": 3})

    assert reply.eval_count == 7 and reply.done_reason == "length"
    assert len(parts) == 8 and "".join(p.response for p in parts) == reply.response
    assert free.done_reason == "stop" and free.eval_count > 0
    assert free.response.startswith(reply.response)


def test_a_stop_sequence_cuts_the_text(runtimes) -> None:
    rt = runtimes(models=[sim("sim-a:1b")])
    full = client(rt).generate("sim-a:1b", "go on", options={"seed": 5, "num_predict": 60}).response
    stop = full.split()[3]

    cut = client(rt).generate("sim-a:1b", "go on", options={"seed": 5, "num_predict": 60, "stop": [stop]})

    assert cut.done_reason == "stop"
    assert stop not in cut.response and full.startswith(cut.response)
    assert cut.eval_count < 60
