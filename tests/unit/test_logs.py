"""Polls of the runtime are logged at DEBUG; requests that do something stay at INFO."""

from __future__ import annotations

import logging

import httpx
import pytest

from mm import logs


def http_request_line(method: str, url: str, status: int) -> None:
    """What httpx logs after each request (httpx/_client.py), through its own logger."""
    logging.getLogger("httpx").info('HTTP Request: %s %s "%s %d %s"', method, httpx.URL(url), "HTTP/1.1", status,
                                    "OK" if status < 400 else "Error")


@pytest.fixture
def httpx_records(caplog):
    logs.quiet_http_polls()
    logs.quiet_http_polls()  # idempotent: one filter however often a process sets it up
    assert sum(isinstance(f, logs._PollsAtDebug) for f in logging.getLogger("httpx").filters) == 1
    caplog.set_level(logging.INFO, logger="httpx")
    return caplog


def test_a_poll_of_the_runtime_is_not_logged_at_info(httpx_records):
    http_request_line("GET", "http://127.0.0.1:11434/api/ps", 200)
    http_request_line("GET", "http://127.0.0.1:11434/api/tags", 200)

    assert httpx_records.records == []


def test_a_poll_is_logged_at_debug_when_debug_is_on(httpx_records):
    httpx_records.set_level(logging.DEBUG, logger="httpx")

    http_request_line("GET", "http://127.0.0.1:11434/api/ps", 200)

    assert [(r.levelno, r.levelname) for r in httpx_records.records] == [(logging.DEBUG, "DEBUG")]


@pytest.mark.parametrize("method, path, status", [("POST", "/api/generate", 200), ("GET", "/api/ps", 500),
                                                  ("POST", "/api/pull", 200), ("DELETE", "/api/delete", 404)])
def test_requests_that_do_something_or_fail_stay_at_info(httpx_records, method, path, status):
    http_request_line(method, f"http://127.0.0.1:11434{path}", status)

    assert [r.levelno for r in httpx_records.records] == [logging.INFO]


def test_the_runtime_logs_served_polls_at_debug_and_the_rest_at_info():
    assert logs.poll_level("GET", "/api/ps", 200) == logging.DEBUG
    assert logs.poll_level("HEAD", "/", 200) == logging.DEBUG
    assert logs.poll_level("GET", "/api/ps", 503) == logging.INFO
    assert logs.poll_level("POST", "/api/generate", 200) == logging.INFO
    assert logs.poll_level("POST", "/api/show", 200) == logging.INFO


class _MergesArgs(logging.Filter):
    """What litellm's secret-redaction filter on the httpx logger does: formats the message early."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = record.getMessage(), ()
        return True


def test_a_poll_is_recognised_after_another_filter_formatted_the_message(httpx_records):
    httpx_logger = logging.getLogger("httpx")
    merges = _MergesArgs()
    httpx_logger.filters.insert(0, merges)
    try:
        http_request_line("GET", "http://127.0.0.1:11434/api/ps", 200)
        http_request_line("POST", "http://127.0.0.1:11434/api/generate", 200)
    finally:
        httpx_logger.removeFilter(merges)

    assert [r.getMessage().split()[3] for r in httpx_records.records] == ["http://127.0.0.1:11434/api/generate"]
