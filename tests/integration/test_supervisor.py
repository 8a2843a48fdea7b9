"""The supervisor `mm up` runs its children with: restartable ones come back, within a limit."""

import sys

from mm.supervisor import MAX_RESTARTS_PER_MINUTE, Supervisor
from tests.procs import wait_for


def test_a_restartable_child_is_started_again_and_a_crash_loop_is_left_down(tmp_path):
    sup = Supervisor(tmp_path, env={})
    flaky = sup.spawn("flaky", [sys.executable, "-c", "print('up'); raise SystemExit(3)"], restart=True)
    steady = sup.spawn("steady", [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        codes = []
        for _ in range(MAX_RESTARTS_PER_MINUTE):
            wait_for(lambda: flaky in sup.dead(), 20, what="the flaky child to exit")
            revived = sup.revive()
            assert [child for child, _ in revived] == [flaky]
            codes += [code for _, code in revived]
        assert codes == [3] * MAX_RESTARTS_PER_MINUTE
        wait_for(lambda: flaky in sup.dead(), 20, what="the flaky child to exit again")
        assert sup.revive() == [] and sup.dead() == [flaky]  # restarted too often: left down
        assert (tmp_path / "flaky.log").read_text().count("up") == MAX_RESTARTS_PER_MINUTE + 1
        assert steady.popen.poll() is None
    finally:
        sup.stop_all()
    assert steady.popen.poll() is not None
