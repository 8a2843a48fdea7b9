"""Check a batch's input file and turn its lines into validated job requests.

A line is ``{"custom_id": "...", "method": "POST", "url": "<endpoint>", "body": {...}}``. The
whole file is checked before anything is enqueued; an invalid file fails its batch with one error
per bad line (1-based ``line``), as OpenAI reports them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from mm.errors import UnknownModel, ValidationError
from mm.gateway.openai_shape import OpenAIError, job_kwargs
from mm.settings import Settings
from mm.validation import JobRequest, ModelFacts, validate

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_ERRORS = 100  # errors listed per failed batch; the count of the rest is said in the last one


@dataclass(frozen=True)
class Line:
    """One request of a batch: its 0-based position, the client's id and the validated job."""

    index: int
    custom_id: str
    request: JobRequest


@dataclass
class LineError(Exception):
    """Why one line was refused, in the shape of an item of a batch's ``errors.data``."""

    line: int  # 1-based
    code: str
    message: str
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True)
class Context:
    """What checking a line needs: the batch's endpoint, priority and id, and the models known now."""

    endpoint: str
    priority: str
    batch_id: str
    settings: Settings
    known_models: frozenset[str]
    facts: Callable[[str], ModelFacts | None]


def _request(number: int, obj: dict[str, Any], ctx: Context) -> JobRequest:
    """The line's validated job; raises LineError."""
    if obj.get("method", "POST") != "POST":
        raise LineError(number, "invalid_method", f"method must be POST, not {obj.get('method')!r:.40}", "method")
    if obj.get("url") != ctx.endpoint:
        raise LineError(number, "mismatched_url",
                        f"url must be the batch's endpoint {ctx.endpoint}, not {obj.get('url')!r:.80}", "url")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError(number, "missing_required_parameter", "body must be a JSON object", "body")
    try:
        model, kwargs = job_kwargs(ctx.endpoint, body)
        return validate(model, known_models=ctx.known_models, settings=ctx.settings, facts=ctx.facts(model),
                        priority=ctx.priority, metadata={"batch_id": ctx.batch_id, "custom_id": obj["custom_id"]},
                        **kwargs)
    except OpenAIError as exc:
        raise LineError(number, exc.code or exc.type, exc.message, exc.param) from None
    except UnknownModel as exc:
        raise LineError(number, "model_not_found", exc.message, "body.model") from None
    except ValidationError as exc:
        raise LineError(number, "invalid_request", exc.message, f"body.{exc.field}") from None


def _line(index: int, number: int, raw: bytes, seen: set[str], ctx: Context) -> Line:
    """Parse and check one raw line (request ``index``, file line ``number``); raises LineError."""
    if len(raw) > ctx.settings.gateway_max_body:
        raise LineError(number, "line_too_large",
                        f"the line is {len(raw)} bytes, over the limit of {ctx.settings.gateway_max_body}")
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise LineError(number, "invalid_json_line", f"the line is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise LineError(number, "invalid_json_line", "the line must be a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError(number, "missing_required_parameter", "custom_id must be a non-empty string", "custom_id")
    if custom_id in seen:
        raise LineError(number, "duplicate_custom_id", f"custom_id {custom_id!r:.80} appears more than once",
                        "custom_id")
    seen.add(custom_id)
    return Line(index, custom_id, _request(number, obj, ctx))


def raw_lines(data: bytes) -> list[tuple[int, bytes]]:
    """The file's non-blank lines with their 1-based numbers."""
    return [(n, raw) for n, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]


class Peeked(NamedTuple):
    """What finalizing and cancelling need of a request: its id, model and embeddings' encoding."""

    custom_id: str
    model: str
    encoding: str


def peek(data: bytes) -> list[Peeked]:
    """Each request of a file already checked, read again without validating it."""
    found = []
    for _, raw in raw_lines(data):
        obj = json.loads(raw)
        body = obj.get("body") if isinstance(obj.get("body"), dict) else {}
        encoding = "base64" if body.get("encoding_format") == "base64" else "float"
        found.append(Peeked(str(obj.get("custom_id")), str(body.get("model")), encoding))
    return found


def check(data: bytes, ctx: Context) -> tuple[list[Line], list[LineError]]:
    """Every line as a job, or the errors that make the file invalid (then no line is usable)."""
    lines: list[Line] = []
    errors: list[LineError] = []
    numbered = raw_lines(data)
    if not numbered:
        return [], [LineError(1, "empty_file", "the input file has no requests")]
    if len(numbered) > ctx.settings.batch_max_lines:
        return [], [LineError(numbered[ctx.settings.batch_max_lines][0], "too_many_requests",
                              f"the file has {len(numbered)} requests; a batch holds at most "
                              f"{ctx.settings.batch_max_lines} (MM_BATCH_MAX_LINES)")]
    seen: set[str] = set()
    # A job's id is its request's position (blank lines do not count).
    for index, (number, raw) in enumerate(numbered):
        try:
            lines.append(_line(index, number, raw, seen, ctx))
        except LineError as exc:
            errors.append(exc)
    if len(errors) > MAX_ERRORS:
        more = len(errors) - MAX_ERRORS
        errors = errors[:MAX_ERRORS - 1] + [LineError(errors[MAX_ERRORS - 1].line, "more_errors",
                                                      f"{more + 1} more lines are invalid")]
    return (lines if not errors else []), errors
