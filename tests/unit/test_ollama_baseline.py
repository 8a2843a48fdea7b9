"""The simulated Ollama (bench/sim_baselines.py) does what Ollama's server/sched.go does.

One behaviour per test, each named after the function of sched.go it pins. Times are exact: a
model of ``s`` GB loads in ``s`` seconds (1 GB/s) and a job of ``n`` eval tokens takes ``n / 10``
seconds (no prompt tokens), so every expected time below is a sum of those.
"""

from __future__ import annotations

import pytest

from bench.sim_baselines import OLLAMA_ROWS, OllamaSim
from bench.simcore import Trace, TraceJob
from mm.runtime import ollama_rules as rules
from mm.runtime.catalog import ModelSpec
from tests.support import GB


def spec(name: str, size_gb: float, parallel: int = 4) -> ModelSpec:
    return ModelSpec(name, size=int(size_gb * GB), load_bandwidth=GB, prompt_rate=1000.0, eval_rate=10.0,
                     parallel=parallel)


def job(t: float, model: str, seconds: float) -> TraceJob:
    return TraceJob(t, model, "normal", 0, int(seconds * 10))


def run(specs: list[ModelSpec], jobs: list[TraceJob], memory_gb: float, **settings) -> OllamaSim:
    sim = OllamaSim(Trace("t", {s.name: s for s in specs}, jobs, memory=int(memory_gb * GB)), **settings)
    sim.run()
    return sim


def ends(sim: OllamaSim) -> list[float]:
    return sorted(sim.out.ends)


def events(sim: OllamaSim, kind: str) -> list[tuple[float, str]]:
    return [(round(t, 6), model) for t, k, model in sim.log if k == kind]


def test_get_runner_sends_a_request_for_a_loaded_model_straight_to_it_past_a_waiting_head():
    # Given a busy a (4 GB) and a head for c (8 GB) that waits for a to drain,
    specs = [spec("a", 4), spec("c", 8)]
    jobs = [job(0, "a", 10), job(2, "c", 1), job(3, "a", 1)]

    # when another request for a arrives,
    sim = run(specs, jobs, memory_gb=10, num_parallel=None)

    # it runs on a at once (ends at 3 + 1), not behind c's load (a loads 0-4, so it starts at 4).
    assert ends(sim)[0] == pytest.approx(5.0)
    assert sim.out.latencies["normal"][0] == pytest.approx(1.0 + 1.0)  # 4 - 3 waiting for the load, 1 running


def test_process_pending_loads_one_model_at_a_time_even_on_several_gpus():
    # (Before v0.11.5 filterGPUsWithoutLoadingModels let loads run at once on idle GPUs; the
    # fleet benchmark's baseline still did.)
    # Given a server with two GPUs and room for both models, each on its own GPU,
    specs = [spec("a", 4), spec("b", 4)]

    # when both are requested at once,
    sim = run(specs, [job(0, "a", 1), job(0, "b", 1)], memory_gb=10, gpus=2)

    # b's load starts only once a runs: the head holds up the request behind it.
    assert events(sim, "load") == [(0.0, "a"), (4.0, "b")]
    assert ends(sim) == pytest.approx([5.0, 9.0])


def test_find_runner_to_unload_takes_the_first_idle_runner_by_keep_alive_then_blob_path():
    # Given three idle models with the same keep_alive, the first by blob path used most recently
    # (the least recently used one would expire soonest),
    names = sorted(["m1", "m2", "m3"], key=rules.blob_path)
    first, others = names[0], names[1:]
    specs = [spec(n, 3) for n in names] + [spec("new", 3)]
    jobs = [job(0, others[0], 1), job(0, others[1], 1), job(0, first, 1), job(30, "new", 1)]

    # when a fourth model needs room (3 models loaded: OLLAMA_MAX_LOADED_MODELS' default on 1 GPU),
    sim = run(specs, jobs, memory_gb=100)

    # the victim is the first by blob path, not the one expiring soonest.
    assert events(sim, "unload")[0] == (30.0, first)


def test_find_runner_to_unload_drains_the_first_busy_runner_when_none_is_idle():
    # Given a and b both busy, a finishing later than b but first by blob path (or the other way),
    first, second = sorted(["a", "b"], key=rules.blob_path)
    specs = [spec(first, 4), spec(second, 4), spec("c", 4)]
    jobs = [job(0, first, 20), job(0, second, 10), job(12, "c", 1), job(14, first, 10)]

    # when c needs room (4 GB does not fit in 80% of the 2 GB left),
    sim = run(specs, jobs, memory_gb=10, num_parallel=None)

    # the first by blob path is chosen though the other goes idle sooner; a request for it
    # arriving while it drains joins it; it unloads after that one ends, and only then c loads.
    unloads = events(sim, "unload")
    assert unloads[0] == (pytest.approx(24.0), first)  # 4 + 20 for the first job, 14 + 10 for the joiner
    assert events(sim, "load")[-1] == (pytest.approx(24.0 + rules.VRAM_POLL_S), "c")


def test_unloading_waits_for_memory_to_show_as_free_before_the_next_load():
    # Given an idle a filling the memory and a slow GPU driver (memory shows free after 2 s),
    specs = [spec("a", 6), spec("b", 6)]

    # when b needs a's place,
    sim = run(specs, [job(0, "a", 1), job(20, "b", 1)], memory_gb=10, vram_recovery_s=2.0)

    # b loads only once the wait is over; the wait is capped at Ollama's 5 s.
    assert events(sim, "load")[1] == (22.0, "b")
    capped = run(specs, [job(0, "a", 1), job(20, "b", 1)], memory_gb=10, vram_recovery_s=60.0)
    assert events(capped, "load")[1] == (25.0, "b")


def test_max_loaded_models_defaults_to_three_per_gpu_and_evicts_with_memory_free():
    specs = [spec(f"m{i}", 1) for i in range(7)]
    jobs = [job(10 * i, f"m{i}", 1) for i in range(7)]

    one_gpu = run(specs, jobs, memory_gb=1000)
    two_gpus = run(specs, jobs, memory_gb=1000, gpus=2)
    capped = run(specs, jobs, memory_gb=1000, max_loaded_models=5)

    def evictions(sim: OllamaSim) -> list[float]:  # unloads before any keep_alive (5 min) runs out
        return [t for t, _ in events(sim, "unload") if t < 300]

    assert evictions(one_gpu) == [30.0, 40.0, 50.0, 60.0]
    assert evictions(two_gpus) == [60.0]
    assert evictions(capped) == [50.0, 60.0]


def test_the_fit_test_keeps_a_fifth_of_the_free_memory_when_other_models_are_loaded():
    # Given an idle 4 GB model on 10 GB: 6 GB free, of which Ollama counts 80% (4.8 GB),
    specs = [spec("a", 4), spec("b", 5), spec("c", 4.5)]

    # a 5 GB model evicts a though it would fit; a 4.5 GB one loads beside it.
    evicting = run(specs, [job(0, "a", 1), job(20, "b", 1)], memory_gb=10)
    beside = run(specs, [job(0, "a", 1), job(20, "c", 1)], memory_gb=10)

    assert events(evicting, "unload")[0] == (20.0, "a")
    assert (20.0, "c") in events(beside, "load") and events(beside, "unload")[0][0] > 300


def test_max_queue_refuses_requests_at_once_and_counts_them_as_failed():
    # Given a long load under way (the head is out of the queue) and a queue of 2,
    specs = [spec(n, 1) for n in "abcde"] + [spec("slow", 10)]
    jobs = [job(0, "slow", 1)] + [job(1 + i, n, 1) for i, n in enumerate("bcde")]

    sim = run(specs, jobs, memory_gb=100, max_queue=2)

    # b and c wait; d and e are refused (503) and counted: failed, refused, not in any latency.
    assert sim.out.refused == 2 and sim.out.failed == 2
    assert [m for _, m in events(sim, "refuse")] == ["d", "e"]
    assert len(sim.out.all_latencies) == 3


def test_num_parallel_defaults_to_one_request_at_a_time_and_tuned_runs_the_models_parallel():
    specs = [spec("a", 1, parallel=4)]
    jobs = [job(0, "a", 2) for _ in range(3)]

    default = run(specs, jobs, memory_gb=10, **OLLAMA_ROWS["ollama-default"])
    tuned = run(specs, jobs, memory_gb=10, **OLLAMA_ROWS["ollama-tuned"])

    assert ends(default) == pytest.approx([3.0, 5.0, 7.0])
    assert ends(tuned) == pytest.approx([3.0, 3.0, 3.0])


def test_a_request_that_sets_keep_alive_gives_a_draining_runner_its_keep_alive_back():
    # Given a busy a chosen for eviction once it loaded (t=6), and clients that send keep_alive
    # 60 s on every request,
    specs = [spec("a", 6), spec("b", 6)]
    jobs = [job(0, "a", 10), job(2, "b", 1), job(8, "a", 1)]

    sim = run(specs, jobs, memory_gb=10, num_parallel=None, client_keep_alive=60.0)

    # the joiner resets keep_alive: a unloads 60 s after its last request, and b waits for it.
    assert events(sim, "unload")[0] == (pytest.approx(16.0 + 60.0), "a")
