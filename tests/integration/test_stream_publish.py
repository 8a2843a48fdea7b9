"""A streamed job's chunk published again (Redis went away before it answered, though it had written
it) reaches the reader once (found by the chaos soak: a streaming client saw a token twice)."""

from __future__ import annotations

import redis

from mm import streams


def test_a_chunk_published_twice_under_its_id_is_read_once(redis_url):
    r = redis.Redis.from_url(redis_url)
    chunks = [{"response": "a", "done": False}, {"response": "b", "done": False}, {"response": "", "done": True}]
    streams.publish(r, "job-1", chunks[0], "1-1")
    streams.publish(r, "job-1", chunks[0], "1-1")  # the retry of one that went through
    streams.publish(r, "job-1", chunks[1], "1-2")
    streams.publish(r, "job-1", {"response": "again", "done": False}, "2-1")  # a later delivery's first chunk
    streams.publish(r, "job-1", chunks[2], "2-2")

    read = [entry["chunk"] for _id, entry in streams.read(r, "job-1", "0-0", 10)]
    assert read == [chunks[0], chunks[1], {"response": "again", "done": False}, chunks[2]]
