"""OpenAI's Batch API through the official ``openai`` SDK, against a live gateway, real Celery
workers and the sim runtime: a whole batch over two models, bad files, cancellation, listing.
"""

from __future__ import annotations

import io
import json
import time

import openai
import pytest
import redis

from mm import keys
from mm.gateway.openai_shape import decode_base64_embedding
from tests.gateway_proc import ollama_stack
from tests.procs import wait_for
from tests.support import GB, sim_model

FAST = {"load_bandwidth": 4 * GB, "prompt_rate": 50_000, "eval_rate": 5_000}
MODEL_A, MODEL_B, EMBED, SLOW = "sim-a:1b", "sim-b:1b", "sim-embed:1b", "sim-slow:1b"
MODELS = [
    sim_model(MODEL_A, **FAST, parallel=4),
    sim_model(MODEL_B, **FAST, parallel=4),
    sim_model(EMBED, **FAST, kind="embed", embedding_dim=16),
    sim_model(SLOW, load_bandwidth=4 * GB, prompt_rate=50_000, eval_rate=20, parallel=1),
]
MEMORY = 4 * GB


@pytest.fixture(scope="module")
def gw(redis_server, tmp_path_factory):
    redis.Redis.from_url(redis_server.url).flushall()
    tmp = tmp_path_factory.mktemp("batches")
    with ollama_stack(tmp, redis_server.url, MODELS, MEMORY, files_dir=tmp / "files", batch_tick_s=0.2) as s:
        s.files_dir = tmp / "files"
        yield s


@pytest.fixture(scope="module")
def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", timeout=60, max_retries=0)


def chat_line(custom_id: str, model: str, text: str, **body: object) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4, **body}}


def jsonl(lines: list[dict | str]) -> bytes:
    return "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode() + b"\n"


def upload(sdk: openai.OpenAI, data: bytes) -> str:
    return sdk.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch").id


def wait_batch(sdk: openai.OpenAI, batch_id: str, statuses: tuple[str, ...], timeout: float = 120):
    seen = []

    def settled() -> bool:
        seen.append(sdk.batches.retrieve(batch_id))
        return seen[-1].status in statuses

    wait_for(settled, timeout, what=f"batch {batch_id} to reach {statuses}")
    return seen[-1]


def read_lines(sdk: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in sdk.files.content(file_id).text.splitlines() if x.strip()]


def queued_jobs(r: redis.Redis, model: str) -> int:
    return sum(r.llen(keys.priority_list(model, step)) for step in keys.PRIORITY_STEPS)


def test_a_batch_of_240_requests_over_two_models_answers_every_custom_id_once(gw, sdk):
    lines = [chat_line(f"req-{i}", MODEL_A if i % 2 else MODEL_B, f"question {i}") for i in range(240)]
    file_id = upload(sdk, jsonl(lines))

    batch = sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                               metadata={"run": "nightly"})
    assert batch.status == "validating"
    done = wait_batch(sdk, batch.id, ("completed", "failed"), timeout=240)

    assert done.status == "completed", done.errors
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (240, 240, 0)
    assert done.metadata == {"run": "nightly"} and done.error_file_id is None
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    out = read_lines(sdk, done.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(240))
    first = next(x for x in out if x["custom_id"] == "req-1")
    assert first["response"]["status_code"] == 200 and first["error"] is None
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == MODEL_A
    assert body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] > 0
    job = redis.Redis.from_url(gw.stack.env["MM_REDIS_URL"]).hgetall(keys.job(first["response"]["request_id"]))
    assert job[b"priority"] == b"low" and b'"batch_id": "' + batch.id.encode() in job[b"metadata"]


def test_embeddings_and_completions_batches_answer_in_their_shapes(sdk):
    emb = upload(sdk, jsonl([{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                              "body": {"model": EMBED, "input": ["one", "two"],
                                       "encoding_format": "base64" if i == 2 else "float"}} for i in range(3)]))
    txt = upload(sdk, jsonl([{"custom_id": "t0", "method": "POST", "url": "/v1/completions",
                              "body": {"model": MODEL_A, "prompt": "Once", "max_tokens": 3}}]))

    b1 = sdk.batches.create(input_file_id=emb, endpoint="/v1/embeddings", completion_window="24h")
    b2 = sdk.batches.create(input_file_id=txt, endpoint="/v1/completions", completion_window="24h")
    e, t = wait_batch(sdk, b1.id, ("completed",)), wait_batch(sdk, b2.id, ("completed",))

    out = {x["custom_id"]: x["response"]["body"] for x in read_lines(sdk, e.output_file_id)}
    floats = out["e0"]["data"][0]["embedding"]
    assert out["e0"]["object"] == "list" and len(out["e0"]["data"]) == 2 and len(floats) == 16
    assert decode_base64_embedding(out["e2"]["data"][0]["embedding"]) == pytest.approx(floats)
    assert read_lines(sdk, t.output_file_id)[0]["response"]["body"]["object"] == "text_completion"


def test_a_file_with_bad_lines_fails_the_batch_naming_each_line_and_enqueues_nothing(gw, sdk):
    r = redis.Redis.from_url(gw.stack.env["MM_REDIS_URL"])
    bad = [
        chat_line("ok-1", MODEL_A, "fine"),
        "{not json",
        chat_line("unknown", "no-such:model", "hello"),
        chat_line("huge", MODEL_A, "x" * 200_000),
        {**chat_line("wrong-url", MODEL_A, "hi"), "url": "/v1/embeddings"},
        chat_line("ok-1", MODEL_A, "duplicate id"),
        chat_line("two", MODEL_A, "n=2", n=2),
    ]
    before = [r.dbsize(), queued_jobs(r, MODEL_A)]
    batch = sdk.batches.create(input_file_id=upload(sdk, jsonl(bad)), endpoint="/v1/chat/completions",
                               completion_window="24h")
    failed = wait_batch(sdk, batch.id, ("failed", "completed"))

    assert failed.status == "failed" and failed.failed_at
    errors = {e.line: e.code for e in failed.errors.data}
    assert errors == {2: "invalid_json_line", 3: "model_not_found", 4: "invalid_request", 5: "mismatched_url",
                      6: "duplicate_custom_id", 7: errors[7]}
    assert errors[7], "n=2 is refused with a code"
    assert all(e.message for e in failed.errors.data)
    assert queued_jobs(r, MODEL_A) == before[1]
    assert not any(k.startswith(f"mm:job:{batch.id}".encode()) for k in r.scan_iter(match="mm:job:batch_*"))


@pytest.mark.parametrize("create, status, message", [
    ({"endpoint": "/v1/responses"}, 400, "endpoint"),
    ({"input_file_id": "file-000000000000000000000000"}, 404, "No such File"),
    ({"completion_window": "soon"}, 400, "completion_window"),
    ({"metadata": {"priority": "urgent"}}, 400, "priority"),
])
def test_bad_batch_creation_is_refused_in_openais_shape(sdk, create, status, message):
    file_id = upload(sdk, jsonl([chat_line("a", MODEL_A, "hi")]))
    args = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"} | create

    with pytest.raises(openai.APIStatusError) as caught:
        sdk.batches.create(**args)

    assert caught.value.status_code == status and message in caught.value.message


def test_a_file_over_the_size_limit_is_refused_with_413(gw, sdk, tmp_path):
    from tests.gateway_proc import start_gateway
    proc, url = start_gateway(tmp_path, gw.stack.env, "gateway-small", files_dir=tmp_path / "f", max_file_bytes=1000)
    try:
        small = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught:
            upload(small, jsonl([chat_line(f"r{i}", MODEL_A, "hello") for i in range(40)]))
        assert caught.value.status_code == 413
    finally:
        proc.stop()


def test_files_are_listed_read_and_deleted(sdk):
    data = jsonl([chat_line("a", MODEL_A, "hi")])
    file_id = upload(sdk, data)

    assert sdk.files.retrieve(file_id).bytes == len(data)
    assert sdk.files.content(file_id).content == data
    assert file_id in {f.id for f in sdk.files.list(purpose="batch")}
    assert sdk.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(file_id)


def test_cancelling_drops_queued_requests_and_keeps_finished_ones(gw, sdk):
    r = redis.Redis.from_url(gw.stack.env["MM_REDIS_URL"])
    lines = [chat_line(f"s{i}", SLOW, f"slow {i}", max_tokens=8) for i in range(30)]
    batch = sdk.batches.create(input_file_id=upload(sdk, jsonl(lines)), endpoint="/v1/chat/completions",
                               completion_window="24h")
    wait_for(lambda: sdk.batches.retrieve(batch.id).request_counts.completed >= 1, 90, what="a first slow answer")

    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_batch(sdk, batch.id, ("cancelled",), timeout=90)

    counts = done.request_counts
    assert counts.total == 30 and 1 <= counts.completed < 30 and counts.failed == 0
    out, errs = read_lines(sdk, done.output_file_id), read_lines(sdk, done.error_file_id)
    assert len(out) == counts.completed and len(out) + len(errs) == 30
    assert {e["error"]["code"] for e in errs} == {"batch_cancelled"}
    assert queued_jobs(r, SLOW) == 0
    with pytest.raises(openai.BadRequestError):
        sdk.batches.cancel(batch.id)


def test_batches_are_listed_newest_first_and_paged(sdk):
    ids = [sdk.batches.create(input_file_id=upload(sdk, jsonl([chat_line("a", MODEL_A, "hi")])),
                              endpoint="/v1/chat/completions", completion_window="24h").id for _ in range(3)]

    first = sdk.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    rest = sdk.batches.list(limit=2, after=first.data[-1].id)
    assert rest.data[0].id == ids[0]
    for batch_id in ids:
        wait_batch(sdk, batch_id, ("completed",))


def test_a_batch_past_its_completion_window_expires_with_its_finished_answers(sdk):
    lines = [chat_line(f"x{i}", SLOW, f"slow {i}", max_tokens=8) for i in range(20)]
    batch = sdk.batches.create(input_file_id=upload(sdk, jsonl(lines)), endpoint="/v1/chat/completions",
                               completion_window="3s")
    started = time.monotonic()
    done = wait_batch(sdk, batch.id, ("expired",), timeout=90)

    assert time.monotonic() - started >= 2.5 and done.expired_at
    errs = read_lines(sdk, done.error_file_id)
    assert errs and {e["error"]["code"] for e in errs} == {"batch_expired"}
    assert done.request_counts.completed + len(errs) == 20
