"""A gateway that died while enqueuing a batch: the next one sends each remaining request once.

Real Redis and mm's real Celery app sending to it; no worker consumes, so the queues show exactly
what was sent.
"""

from __future__ import annotations

import json
from collections import Counter

from mm import client, keys, registry, settings, store
from mm.batches import records
from mm.batches.advance import CHUNK, Advancer
from mm.batches.files import FileStore
from mm.cancel import message_id
from tests.support import GB

MODEL = "resume:1b"
LINES = 500


def batch_file() -> bytes:
    rows = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}]}} for i in range(LINES)]
    return "\n".join(json.dumps(x) for x in rows).encode()


def queued_ids(r) -> Counter:
    return Counter(message_id(raw) for step in keys.PRIORITY_STEPS
                   for raw in r.lrange(keys.priority_list(MODEL, step), 0, -1))


def test_requests_sent_before_a_crash_are_not_sent_again_and_the_rest_are_sent_once(redis_url, tmp_path):
    r = store.connect(redis_url)
    registry.save(r, registry.ModelEntry(name=MODEL, tag_size=GB, size_estimate=GB))
    files = FileStore(tmp_path)
    batch_id = records.create(r, files.create(batch_file(), "f.jsonl", "batch")["id"], "/v1/chat/completions",
                              "24h", {})
    first = Advancer(settings.get(), r, files, owner="first")
    first.advance(records.get(r, batch_id))  # validating -> in_progress
    # The first gateway sent 230 requests, counted 200 of them, and died. The last five it sent
    # have no job record yet (it died between sending them and recording them).
    lines, _ = first.lines(records.get(r, batch_id))
    for line in lines[:230]:
        client.enqueue(line.request, records.job_id(batch_id, line.index))
    r.hset(keys.batch(batch_id), "enqueued", 200)
    r.delete(*(keys.job(records.job_id(batch_id, i)) for i in range(225, 230)))
    assert 230 - 200 <= CHUNK

    Advancer(settings.get(), r, files, owner="second").advance(records.get(r, batch_id))

    sent = queued_ids(r)
    assert set(sent) == {records.job_id(batch_id, i) for i in range(LINES)}
    assert max(sent.values()) == 1
    assert records.get(r, batch_id)["enqueued"] == str(LINES)
