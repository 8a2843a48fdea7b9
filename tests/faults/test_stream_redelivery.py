"""A streamed job whose worker dies mid-stream is not run again from its start: its reader has the
chunks sent so far and would read the answer twice over; it fails, saying why (found by the chaos soak,
where a streaming client read one run's first words followed by a whole second run)."""

from __future__ import annotations

import signal
import threading

import pytest

import mm
from mm.errors import JobFailed
from tests.procs import wait_for
from tests.stack import sim_node
from tests.support import GB, sim_model

MODEL = sim_model("streamy:1b", load_bandwidth=10 * GB, eval_rate=40)


def test_a_streamed_job_whose_worker_died_mid_stream_fails_instead_of_streaming_twice(tmp_path, redis_url):
    with sim_node(tmp_path, redis_url, [MODEL], 4 * GB, workers=("w1",), slots=1) as stack:
        job = mm.submit(MODEL["name"], "a long story", stream=True, options={"num_predict": 200})
        chunks: list[dict] = []
        ended: list[BaseException] = []

        def read() -> None:
            try:
                chunks.extend(job.stream(timeout=90))
            except BaseException as exc:  # the test checks what ended the stream
                ended.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        wait_for(lambda: len(chunks) >= 3, 30, what="the first chunks")
        stack.procs["w1"].signal(signal.SIGKILL)
        stack.start_worker("w2", slots=1)

        with pytest.raises(JobFailed, match="stream interrupted"):
            job.get(timeout=90)
        reader.join(30)
        assert ended and isinstance(ended[0], JobFailed) and "stream interrupted" in str(ended[0])
        assert not any(c.get("done") for c in chunks) and len(chunks) < 200
