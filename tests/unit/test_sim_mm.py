"""The simulator behind bench/schedule.py ticks as the live leader does."""

from bench.sim_mm import MMConfig, MMSim
from bench.simcore import Trace, TraceJob
from mm.runtime.catalog import ModelSpec
from tests.support import GB


def test_job_ends_do_not_postpone_the_periodic_tick():
    # One model running one job at a time: a job ends every 0.1 s for 4 s. The live leader still
    # ticks every tick_s; a simulator that restarted its tick timer on each event would not tick
    # at all until the queue emptied.
    spec = ModelSpec("a:1b", size=GB, load_bandwidth=10 * GB, eval_rate=100.0, parallel=1)
    jobs = [TraceJob(0.0, "a:1b", "normal", 0, 10) for _ in range(40)]
    ticks: list[float] = []

    class Recording(MMSim):
        def _tick(self) -> None:
            ticks.append(self.now)
            super()._tick()

    outcome = Recording(Trace("steady", {"a:1b": spec}, jobs, memory=4 * GB), MMConfig(tick_s=0.25, workers=1,
                                                                                      slots=1)).run()

    assert outcome.settled == 40 and outcome.failed == 0
    busy_until = max(ticks[-1], 4.0)
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False) if b <= busy_until]
    assert len(ticks) >= 4.0 / 0.25, ticks
    assert max(gaps) <= 0.25 + 1e-9, gaps
