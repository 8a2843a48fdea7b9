"""``mm batch``'s pure helpers: the gateway's address and key, its errors, the file's endpoint, what is printed."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from mm.cli.batch import (
    batch_errors,
    default_key,
    default_url,
    error_message,
    errors_path,
    first_endpoint,
    parse_meta,
    progress_line,
    summary,
    table,
)
from mm.settings import Settings

BATCH = {
    "id": "batch_0123456789abcdef01234567", "object": "batch", "endpoint": "/v1/chat/completions",
    "status": "in_progress", "input_file_id": "file-1", "completion_window": "24h", "created_at": 1_700_000_000,
    "expires_at": 1_700_086_400, "in_progress_at": 1_700_000_001, "output_file_id": None, "error_file_id": None,
    "request_counts": {"total": 40, "completed": 10, "failed": 2}, "metadata": {"run": "nightly"}, "errors": None,
}


@pytest.mark.parametrize("settings, url", [
    (Settings(), "http://127.0.0.1:5001"),
    (Settings(gateway_host="0.0.0.0", gateway_port=8080), "http://127.0.0.1:8080"),
    (Settings(gateway_host="gw.lan"), "http://gw.lan:5001"),
    (Settings(gateway_url="https://mm.example/", gateway_port=8080), "https://mm.example"),
])
def test_the_gateway_url_comes_from_mm_gateway_url_else_where_mm_gateway_listens(settings, url):
    assert default_url(settings) == url


def test_the_key_is_mm_api_key_else_the_first_gateway_key_else_none():
    assert default_key(Settings(api_key="mine", gateway_api_keys="a,b")) == "mine"
    assert default_key(Settings(gateway_api_keys=" a , b")) == "a"
    assert default_key(Settings()) is None


@pytest.mark.parametrize("status, body, expected", [
    (404, {"error": {"message": "No such Batch object: batch_x", "type": "invalid_request_error",
                     "code": "batch_not_found"}},
     "the gateway answered 404: No such Batch object: batch_x (batch_not_found)"),
    (401, {"error": "a valid 'Authorization: Bearer <key>' header is required", "field": "Authorization"},
     "the gateway answered 401: a valid 'Authorization: Bearer <key>' header is required"),
    (502, "<html>\n bad gateway </html>", "the gateway answered 502: <html> bad gateway </html>"),
    (500, "", "the gateway answered 500: no body"),
])
def test_a_gateway_error_becomes_one_line(status, body, expected):
    text = body if isinstance(body, str) else json.dumps(body)

    assert error_message(status, text) == expected


@pytest.mark.parametrize("data, endpoint", [
    (b'\n{"custom_id": "a", "url": "/v1/embeddings", "body": {}}\n{"url": "/v1/completions"}\n', "/v1/embeddings"),
    (b'{"custom_id": "a", "body": {}}\n', None),
    (b"{not json\n", None),
    (b"[1, 2]\n", None),
    (b"", None),
])
def test_the_endpoint_is_the_url_of_the_first_line(data, endpoint):
    assert first_endpoint(data) == endpoint


def test_meta_pairs_become_a_dict_and_a_pair_without_equals_is_refused():
    assert parse_meta(("run=nightly", "note=a=b")) == {"run": "nightly", "note": "a=b"}
    with pytest.raises(click.BadParameter, match="not k=v"):
        parse_meta(("nightly",))


@pytest.mark.parametrize("out, errors", [
    ("results.jsonl", "results.errors.jsonl"), ("out/run.1.jsonl", "out/run.1.errors.jsonl"),
    ("res", "res.errors.jsonl"),
])
def test_the_error_file_goes_beside_the_output(out, errors):
    assert errors_path(Path(out)) == Path(errors)


def test_progress_shows_done_of_total_status_and_failures():
    line = progress_line(BATCH, width=10)

    assert line == "[███░░░░░░░] 12/40 in_progress, 2 failed"
    validating = BATCH | {"status": "validating", "request_counts": {"total": 0, "completed": 0, "failed": 0}}
    assert progress_line(validating, 4) == "[░░░░] 0/? validating"


def test_a_failed_batchs_errors_read_as_line_code_and_message():
    failed = BATCH | {"status": "failed", "errors": {"object": "list", "data": [
        {"code": "invalid_json_line", "message": "line 2 is not JSON", "param": None, "line": 2},
        {"code": "too_many_errors", "message": "and 3 more", "param": None, "line": None}]}}

    assert batch_errors(failed) == ["line 2: invalid_json_line: line 2 is not JSON", "too_many_errors: and 3 more"]
    assert "  line 2: invalid_json_line: line 2 is not JSON" in summary(failed)


def test_the_summary_names_the_batch_its_counts_and_metadata():
    text = "\n".join(summary(BATCH))

    assert text.startswith(f"{BATCH['id']}  in_progress  /v1/chat/completions")
    assert "12/40 done: 10 completed, 2 failed" in text and "metadata   run=nightly" in text


def test_the_list_is_a_table_with_a_header():
    rows = table([BATCH, BATCH | {"id": "batch_b", "status": "completed", "endpoint": "/v1/embeddings"}])

    assert rows[0].split() == ["ID", "STATUS", "ENDPOINT", "DONE", "CREATED"]
    assert rows[1].split()[:4] == [BATCH["id"], "in_progress", "/v1/chat/completions", "12/40"]
    assert rows[2].split()[:3] == ["batch_b", "completed", "/v1/embeddings"]
