"""GET /openapi.json: the OpenAPI 3 description of the gateway's REST endpoints, written by hand.

``tests/integration/test_gateway.py`` runs schemathesis against it on a live gateway: every
documented status, content type and response schema is checked against what the gateway answers.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from mm import quality
from mm.gateway.base import BaseHandler, Gateway
from mm.gateway.jobs import JOB_ID_RE
from mm.keys import PRIORITIES
from mm.request_fields import LOAD_OPTIONS, ROLES, RUNTIME_OPTIONS
from mm.settings import Settings
from mm.validation import KINDS

JSON = "application/json"
PRIORITY_NAMES = list(PRIORITIES)


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Any], required: tuple[str, ...] = (), extra: bool = True, **more: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if not extra:
        schema["additionalProperties"] = False
    return schema | more


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return schema | {"nullable": True}


STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
ANY_OBJ = {"type": "object"}
STR_LIST = {"type": "array", "items": STR}


def body(schema: dict[str, Any], description: str = "", required: bool = True) -> dict[str, Any]:
    return {"required": required, "description": description, "content": {JSON: {"schema": schema}}}


def reply(description: str, schema: dict[str, Any] | None = None, media: str = JSON) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    return out


def errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad input; `field` names what is wrong", 401: "Missing or invalid API key",
            404: "Unknown model, job or path", 409: "Conflicts with the state of the model or job",
            413: "Body over MM_GATEWAY_MAX_BODY",
            429: "The API key has MM_MAX_QUEUED_PER_KEY jobs waiting to start (see Retry-After)",
            500: "The runtime failed the job (its own status and reason)",
            502: "The job failed (the reason is given)",
            503: "Redis unavailable",
            504: "The job did not finish in time, or expired: it was not started within its deadline_s"}
    return {str(c): reply(text[c], ref("Error")) for c in codes}


COMMON = (401, 503)


def op(summary: str, responses: dict[str, Any], *, tags: list[str], params: list[dict[str, Any]] | None = None,
       request: dict[str, Any] | None = None, public: bool = False, codes: tuple[int, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary, "tags": tags, "responses": responses | errors(*codes, *COMMON)}
    if params:
        out["parameters"] = params
    if request:
        out["requestBody"] = request
    if public:
        out["security"] = []
        out["responses"].pop("401", None)
    return out


def path_param(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema or {"type": "string", "minLength": 1}}


def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


PRIORITY_PARAM = {"name": "X-MM-Priority", "in": "header", "required": False,
                  "description": "Job priority (default normal)", "schema": {"type": "string", "enum": PRIORITY_NAMES}}
DEADLINE_PARAM = {"name": "X-MM-Deadline", "in": "header", "required": False,
                  "description": "Seconds within which the job must start, else it ends expired without running",
                  "schema": {"type": "number", "minimum": 0, "exclusiveMinimum": True}}
JOB_HEADERS = [PRIORITY_PARAM, DEADLINE_PARAM]  # the headers of the Ollama routes' jobs
MODEL = path_param("name", "Model name, e.g. gemma3:270m")
WAIT = query("wait", {"type": "number", "minimum": 0, "maximum": 600},
             "Seconds to wait for the model to reach the requested state")

# Base64 as Python's b64decode(validate=True) accepts it: padded groups of four.
BASE64 = {"type": "string", "minLength": 4,
          "pattern": r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"}
FORMAT = {"oneOf": [{"type": "string", "enum": ["json"]}, ANY_OBJ]}
_TYPES: dict[type, dict[str, Any]] = {int: INT, float: NUM, bool: BOOL, list: {"oneOf": [STR, STR_LIST]}}
OPTIONS = obj({name: nullable(dict(_TYPES[typ])) for name, typ in {**RUNTIME_OPTIONS, **LOAD_OPTIONS}.items()},
              extra=False, description="Ollama options (null: unset); load-time ones (num_ctx, ...) are fixed per "
                                       "model by mm, and another num_ctx is answered with a warning")
OPTIONS["properties"]["num_predict"] = {"type": "integer", "minimum": -2, "nullable": True}


def _text(limit: int) -> dict[str, Any]:
    """A prompt-like string: not blank, at most ``limit`` characters."""
    return {"type": "string", "minLength": 1, "maxLength": limit, "pattern": r"\S"}


def job_options(settings: Settings) -> dict[str, Any]:
    """OPTIONS with ``num_predict`` up to MM_MAX_NUM_PREDICT, which validation checks before the model
    (a model's own lower ceiling, from the registry, is not known here)."""
    if settings.max_num_predict <= 0:
        return OPTIONS
    num_predict = OPTIONS["properties"]["num_predict"] | {"maximum": settings.max_num_predict}
    return OPTIONS | {"properties": OPTIONS["properties"] | {"num_predict": num_predict}}


def job_fields(settings: Settings) -> dict[str, Any]:
    """The job fields mm.submit validates, with its limits."""
    limit = settings.max_prompt_chars
    message = obj({"role": {"type": "string", "enum": list(ROLES)}, "content": {"type": "string", "maxLength": limit},
                   "images": {"type": "array", "items": BASE64, "maxItems": settings.max_images}}, ("role",))
    return {
        "prompt": {"oneOf": [_text(limit), {"type": "array", "items": _text(limit), "minItems": 1}],
                   "description": "The prompt (generate), or one or more texts (embed)"},
        # One message with content is enough: a non-blank first message is what this documents.
        "messages": {"type": "array", "minItems": 1, "items": message,
                     "description": "Chat messages; their contents together must not be empty"},
        "kind": {"type": "string", "enum": list(KINDS)},
        "priority": {"type": "string", "enum": PRIORITY_NAMES}, "options": job_options(settings),
        "images": {"type": "array", "items": BASE64, "maxItems": settings.max_images},
        "metadata": ANY_OBJ, "format": FORMAT, "system": _text(limit),
        "deadline_s": {"type": "number", "minimum": 0, "exclusiveMinimum": True,
                       "description": "Seconds within which the job must start, else it ends expired without running"},
    }


def job_request(settings: Settings, extra: dict[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    """A job body: a prompt for generate and embed, messages for chat, never both."""
    schema = obj(job_fields(settings) | extra, required, extra=False)
    schema["oneOf"] = [
        {"required": ["prompt"], "not": {"required": ["messages"]},
         "properties": {"prompt": _text(settings.max_prompt_chars),
                        "kind": {"type": "string", "enum": ["generate", "embed"]}}},
        {"required": ["prompt", "kind"], "not": {"required": ["messages"]},
         "properties": {"prompt": {"type": "array"}, "kind": {"type": "string", "enum": ["embed"]}}},
        {"required": ["messages", "kind"], "not": {"required": ["prompt"]},
         "properties": {"kind": {"type": "string", "enum": ["chat"]},
                        "messages": {"type": "array", "minItems": 1, "items": obj(
                            {"content": {"type": "string", "minLength": 1, "pattern": r"\S"}}, ("role", "content"))}}},
    ]
    return schema


TOOL_CALL = obj({"id": STR, "function": obj({"index": INT, "name": {"type": "string", "minLength": 1},
                                             "arguments": ANY_OBJ}, ("name",))}, ("function",))
MESSAGE = obj({"role": {"type": "string", "enum": list(ROLES)}, "content": STR, "images": STR_LIST,
               "thinking": STR, "tool_calls": {"type": "array", "items": TOOL_CALL}, "tool_name": STR,
               "tool_call_id": STR}, ("role", "content"))
PROMPT = {"oneOf": [STR, {"type": "array", "items": STR, "minItems": 1}]}
QUALITY_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$"}
JOB_ID_PATTERN = JOB_ID_RE.pattern
MODEL_NAME = {"type": "string", "minLength": 1}
KEEP_ALIVE = {"oneOf": [NUM, STR], "description": "Ignored (mm decides residency), except 0 with an empty prompt"}
# Ollama's request fields, passed to the runtime with the job (what the model cannot do is a 400).
THINK = {"oneOf": [BOOL, {"type": "string", "enum": ["low", "medium", "high", "max"]}]}
TOP_LOGPROBS = {"type": "integer", "minimum": 0, "maximum": 20}
TOOL = obj({"type": {"type": "string", "enum": ["function"]},
            "function": obj({"name": {"type": "string", "minLength": 1, "pattern": r"\S"}, "description": STR,
                             "parameters": ANY_OBJ}, ("name",))}, ("function",))
GENERATE_FIELDS = {"suffix": STR, "template": STR, "raw": BOOL, "context": {"type": "array", "items": INT},
                   "think": THINK, "logprobs": BOOL, "top_logprobs": TOP_LOGPROBS, "truncate": BOOL}
CHAT_FIELDS = {"tools": {"type": "array", "items": TOOL}, "think": THINK, "logprobs": BOOL,
               "top_logprobs": TOP_LOGPROBS, "truncate": BOOL}
ANSWER_EXTRAS = {"logprobs": {"type": "array", "items": ANY_OBJ}, "warnings": STR_LIST}
TIME_QUERY = {"anyOf": [NUM, {"type": "string", "format": "date-time"}, {"type": "string", "maxLength": 0}],
              "description": "Epoch seconds or ISO 8601; empty means unbounded"}
TIMINGS = obj({k: NUM for k in ("queue_wait_s", "load_s", "runtime_load_s", "prompt_eval_s", "eval_s",
                                "tokens_per_s", "runtime_s")} | {"prompt_tokens": INT, "eval_tokens": INT})
MODEL_VIEW = obj({
    "name": STR, "status": {"type": "string", "enum": ["running", "loading", "unloading", "stopped"]},
    "resident_on": STR_LIST, "size": INT, "tag_size": INT, "learned_size": INT, "digest": STR, "details": ANY_OBJ,
    "num_ctx": INT, "max_parallel": INT, "context_length": INT, "capabilities": nullable(STR_LIST),
    "max_num_predict": INT, "pinned": BOOL, "pinned_by": nullable(STR), "warm": BOOL,
    "nodes": STR_LIST, "queued": INT, "in_flight": INT, "last_used_at": nullable(STR), "active": BOOL, "idle": BOOL,
    "job_id": nullable(STR), "warmup_error": STR, "unload_requested_on": STR_LIST,
}, ("name", "status", "resident_on", "pinned", "max_parallel", "queued", "in_flight"))
ACTIVITY = obj({"model": STR, "last_used": nullable(NUM), "last_used_at": nullable(STR), "idle_s": nullable(NUM),
                "active": BOOL, "idle": BOOL, "resident_on": STR_LIST, "size": INT, "queued": INT, "in_flight": INT,
                "pinned": BOOL, "warm": BOOL}, ("model", "active", "idle"))
DURATIONS = {k: INT for k in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                              "eval_count", "eval_duration")}
# 409: the job was cancelled (DELETE /api/job/<id>); 429: MM_MAX_QUEUED_PER_KEY; 504: not finished, or expired
OLLAMA_ERRORS = (400, 404, 409, 413, 429, 500, 502, 504)
PULL_NAME = {"type": "string", "minLength": 1, "maxLength": 256}
PULL_STATUS = obj({"status": STR, "digest": STR, "total": INT, "completed": INT}, ("status",))
NDJSON = "application/x-ndjson"

SCHEMAS: dict[str, Any] = {
    "Error": obj({"error": STR, "field": STR}, ("error",)),
    "SubmitResponse": obj({"job_id": STR, "status": {"type": "string", "enum": ["submitted"]}, "model": STR,
                           "priority": STR}, ("job_id", "status")),
    "Job": obj({
        "job_id": STR, "status": {"type": "string",
                                  "enum": ["pending", "queued", "running", "complete", "failed", "cancelled",
                                           "expired"]},
        "model": nullable(STR), "kind": nullable(STR), "priority": nullable(STR), "submitted_at": nullable(STR),
        "started_at": nullable(STR), "completed_at": nullable(STR), "node": nullable(STR), "worker": nullable(STR),
        "metadata": {}, "result": {"description": "Text (generate, chat) or embeddings (embed)"},
        "timings": nullable(TIMINGS), "output": ANY_OBJ, "error": STR,
        "error_status": {"type": "integer", "description": "The runtime's HTTP status when it refused the job"},
    }, ("job_id", "status")),
    "Stats": obj({
        "running": BOOL, "at": NUM, "leader": obj({"owner": nullable(STR), "fence": INT}),
        "queue": obj({"total_jobs": INT,
                      "by_status": obj({k: INT for k in ("queued", "running", "complete", "failed")}),
                      "finished_window_s": NUM}),
        "queues": {"type": "object", "additionalProperties": obj(
            {p: INT for p in PRIORITY_NAMES} | {"total": INT, "oldest_wait_s": NUM})},
        "finished": {"type": "object", "additionalProperties": obj({"ok": INT, "error": INT})},
        "resources": obj({
            "vram": obj({"total": INT, "used": INT, "free": INT}),
            "loaded_models": {"type": "array", "items": obj({"model": STR, "node": STR, "size": INT})},
            "nodes": {"type": "array", "items": obj({
                "node": STR, "runtime_url": nullable(STR), "runtime_up": BOOL, "warnings": STR_LIST,
                "memory": obj({"source": STR, "total": INT, "used": INT, "free": INT,
                               "gpus": {"type": "array", "items": obj({"index": INT, "name": STR, "total": INT,
                                                                       "used": INT, "free": INT})}}),
                "resident": {"type": "array", "items": obj({"model": STR, "size": INT, "workers": STR_LIST,
                                                            "in_flight": INT})},
                "workers": {"type": "array", "items": obj({"hostname": STR, "slots": INT, "bound": nullable(STR),
                                                           "running": INT})},
            })},
        }),
        "workers": obj({"total": INT, "bound": INT, "slots": INT, "busy": INT, "gone": STR_LIST}),
        "alerts": obj({"firing": {"type": "array", "items": ANY_OBJ}, "pending": INT}),
        "batches": obj({"live_total": INT, "live": {"type": "array", "items": ref("BatchRow")},
                        "finished": {"type": "array", "items": ref("BatchRow")}}),
    }, ("running", "queue", "resources")),
    "BatchRow": obj({
        "id": STR, "status": STR, "endpoint": STR, "priority": STR, "total": INT, "completed": INT, "failed": INT,
        "cancelled": INT, "created_at": NUM, "ended_at": nullable(NUM),
    }, ("id", "status", "total", "completed", "failed")),
    "Health": obj({"status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]}, "problems": STR_LIST,
                   "redis": STR, "leader": nullable(STR), "nodes": INT, "workers": INT, "models": INT}, ("status",)),
    "RecentJobs": obj({"running": {"type": "array", "items": ANY_OBJ}, "queued": {"type": "array", "items": ANY_OBJ},
                       "finished": {"type": "array", "items": ANY_OBJ}}, ("running", "queued", "finished")),
    "Rollups": obj({"resolution": STR, "bucket_s": INT, "start": NUM, "end": NUM, "rolled_up_until": NUM,
                    "models": {"type": "object", "additionalProperties": {"type": "array", "items": obj(
                        {"start": INT, "model": STR, "count": INT, "errors": INT, "error_rate": NUM,
                         "p50_latency_s": NUM, "p95_latency_s": NUM, "p99_latency_s": NUM,
                         "queue_wait_p95_s": NUM, "tokens_per_s": NUM, "loads": INT, "unloads": INT},
                        ("start", "model", "count"))}}},
                   ("resolution", "models")),
    "ActivityList": obj({"models": {"type": "array", "items": ACTIVITY}, "count": INT, "active_window_s": NUM,
                         "idle_threshold_s": NUM}, ("models", "count")),
    "Report": obj({"model": STR, "status": STR, "last_used": NUM, "last_used_at": STR}, ("model", "last_used")),
    "QualityStats": obj({"name": STR, "version": STR, "start": nullable(NUM), "end": nullable(NUM), "count": INT,
                         "fields": {"type": "object", "additionalProperties": obj(
                             {k: NUM for k in ("count", "mean", "min", "max", "p50", "p95")})}},
                        ("name", "version", "count", "fields")),
    "Model": MODEL_VIEW,
    "ModelList": obj({"models": {"type": "array", "items": MODEL_VIEW}, "count": INT}, ("models", "count")),
    "ModelPatch": obj({"pinned": BOOL, "max_parallel": {"type": "integer", "minimum": 1, "maximum": 1024},
                       "max_num_predict": {"type": "integer", "minimum": 0, "maximum": 1_000_000,
                                           "description": "num_predict ceiling of this model (0: MM_MAX_NUM_PREDICT)"}},
                      extra=False, minProperties=1),
    "InferResult": obj({"job_id": STR, "status": STR, "model": STR, "result": {}, "timings": TIMINGS,
                        "output": ANY_OBJ}, ("job_id", "status", "model")),
    "History": obj({"model": STR, "registered": BOOL, "count": INT, "total": INT, "cleared_at": nullable(STR),
                    "history": {"type": "array", "items": obj({
                        "event": {"type": "string", "enum": ["load", "unload", "pull", "pin", "load_failed",
                                                             "unload_failed", "pull_failed", "reject", "job_failed"]},
                        "at": NUM, "time": STR, "node": STR, "size": INT, "seconds": NUM, "reason": STR,
                        "waited_s": NUM, "error": STR, "pinned": BOOL}, ("event", "at", "time"))}},
                   ("model", "history")),
    "Cleared": obj({"model": STR, "cleared": INT, "cleared_at": STR}, ("model", "cleared", "cleared_at")),
    "GenerateRequest": obj({"model": MODEL_NAME, "prompt": STR, "system": STR,
                            "images": {"type": "array", "items": BASE64}, "format": FORMAT, "options": OPTIONS,
                            "stream": BOOL, "keep_alive": KEEP_ALIVE}
                           | GENERATE_FIELDS, ("model",),
                           description="An empty prompt loads the model (with keep_alive 0: unloads it)"),
    "GenerateResponse": obj({"model": STR, "created_at": STR, "response": STR, "done": BOOL,
                             "done_reason": STR, "thinking": STR, "context": {"type": "array", "items": INT}}
                            | DURATIONS | ANSWER_EXTRAS, ("model", "created_at", "response", "done")),
    "ChatRequest": obj({"model": MODEL_NAME, "messages": {"type": "array", "items": MESSAGE}, "format": FORMAT,
                        "options": OPTIONS, "stream": BOOL, "keep_alive": KEEP_ALIVE} | CHAT_FIELDS,
                       ("model",)),
    "ChatResponse": obj({"model": STR, "created_at": STR, "message": MESSAGE, "done": BOOL, "done_reason": STR}
                        | DURATIONS | ANSWER_EXTRAS, ("model", "created_at", "message", "done")),
    "EmbedRequest": obj({"model": MODEL_NAME, "input": PROMPT, "options": OPTIONS, "truncate": BOOL,
                         "keep_alive": KEEP_ALIVE, "dimensions": {"type": "integer", "minimum": 0}}, ("model",)),
    "EmbedResponse": obj({"model": STR, "embeddings": {"type": "array", "items": {"type": "array", "items": NUM}},
                          "total_duration": INT, "load_duration": INT, "prompt_eval_count": INT,
                          "warnings": STR_LIST}, ("model", "embeddings")),
    "Tags": obj({"models": {"type": "array", "items": obj({"name": STR, "model": STR, "modified_at": STR,
                                                            "size": INT, "digest": STR, "details": ANY_OBJ})}},
                ("models",)),
    "Ps": obj({"models": {"type": "array", "items": obj({"name": STR, "model": STR, "size": INT, "size_vram": INT,
                                                          "digest": STR, "details": ANY_OBJ, "expires_at": STR,
                                                          "context_length": INT})}}, ("models",)),
}


def _paths() -> dict[str, Any]:
    """Every documented endpoint, one group per tag, in the order the document lists them."""
    return _job_paths() | _monitor_paths() | _quality_paths() | _model_paths() | _ollama_paths() | _ops_paths()


JOB_ID = path_param("job_id", "The id /api/submit returned", {"type": "string", "pattern": JOB_ID_PATTERN})


def _job_paths() -> dict[str, Any]:
    """The job manager API: submit, follow and account for jobs."""
    jobs = ["jobs"]
    return {
        "/api/submit": {"post": op("Submit a job (job manager API)", {"200": reply("Enqueued", ref("SubmitResponse"))},
                                   tags=jobs, request=body(ref("SubmitRequest")), codes=(400, 404, 413, 429))},
        "/api/job/{job_id}": {
            "get": op("A job's status, and its result or error (job manager API)",
                      {"200": reply("The job", ref("Job"))}, tags=jobs, params=[JOB_ID], codes=(400, 404)),
            "delete": op("Cancel a job: a queued one never runs, a running one is stopped",
                         {"200": reply("The job, cancelled", ref("Job")),
                          "202": reply("The job, still being stopped by its worker", ref("Job"))},
                         tags=jobs, params=[JOB_ID], codes=(400, 404, 409)),
        },
        "/api/stats": {"get": op("Queues, jobs by status, nodes with memory per GPU, resident models (job manager API)",
                                 {"200": reply("Statistics", ref("Stats"))}, tags=jobs)},
        "/api/health": {"get": op("Health (no key needed)", {"200": reply("Redis answers", ref("Health"))},
                                  tags=jobs, public=True)},
        "/api/jobs": {"get": op("Jobs running, the oldest queued and the last finished",
                                {"200": reply("Recent jobs", ref("RecentJobs"))}, tags=jobs, codes=(400,),
                                params=[query("n", {"type": "integer", "minimum": 1, "maximum": 500},
                                              "How many of each")])},
        "/api/rollups": {"get": op("Per-model minute or hour figures (latency, throughput, errors)",
                                   {"200": reply("Rollups", ref("Rollups"))}, tags=jobs, codes=(400, 404), params=[
                                       query("resolution", {"type": "string", "enum": ["minute", "hour"]},
                                             "Bucket size"),
                                       query("span_s", {"type": "number", "minimum": 60, "maximum": 31 * 86400},
                                             "Trailing seconds covered"),
                                       query("model", STR, "Only this model")])},
    }


def _monitor_paths() -> dict[str, Any]:
    """Idle shutdown: which models were used lately, and reporting use."""
    monitor = ["monitor"]
    return {
        "/health": {"get": op("Health (model monitor; no key needed)", {"200": reply("Redis answers", ref("Health"))},
                              tags=monitor, public=True)},
        "/models/active": {"get": op("Models used within MM_ACTIVE_WINDOW_S (model monitor)",
                                     {"200": reply("Active models", ref("ActivityList"))}, tags=monitor)},
        "/models/idle": {"get": op("Models unused for MM_IDLE_THRESHOLD_S, or never (model monitor)",
                                   {"200": reply("Idle models", ref("ActivityList"))}, tags=monitor)},
        "/models/activity": {"get": op("Every model's activity (model monitor)",
                                       {"200": reply("All models", ref("ActivityList"))}, tags=monitor)},
        "/models/{name}/report": {"post": op("Mark a model used now (model monitor)",
                                             {"200": reply("Reported", ref("Report"))}, tags=monitor,
                                             params=[MODEL], codes=(404,))},
    }


def _quality_paths() -> dict[str, Any]:
    """Quality metrics: recording events and reading their stats."""
    quality = ["quality"]
    return {
        "/api/metrics": {"post": op("Record quality events: one event, or {events: [...]}",
                                    {"201": reply("Stored", ANY_OBJ)}, tags=quality, codes=(400, 413),
                                    request=body({"oneOf": [ref("QualityEvent"), obj(
                                        {"events": {"type": "array", "items": ref("QualityEvent"), "minItems": 1,
                                                    "maxItems": 1000}}, ("events",), extra=False)]}))},
        "/stats/{name}/{version}": {"get": op("Quality stats of a model version",
                                              {"200": reply("Stats per field", ref("QualityStats"))}, tags=quality,
                                              codes=(400,), params=[
                                                  path_param("name", "Model name", QUALITY_NAME),
                                                  path_param("version", "Model version", QUALITY_NAME),
                                                  query("start", TIME_QUERY, "Epoch seconds or ISO 8601"),
                                                  query("end", TIME_QUERY, "Epoch seconds or ISO 8601")])},
    }


def _model_paths() -> dict[str, Any]:
    """Model management: the registry, residency, jobs by model and history."""
    models = ["models"]
    model_codes = (400, 404)
    return {
        "/api/models": {"get": op("Registered models with residency and demand (model control)",
                                  {"200": reply("Models", ref("ModelList"))}, tags=models)},
        "/api/models/{name}": {
            "get": op("One model", {"200": reply("The model", ref("Model"))}, tags=models, params=[MODEL],
                      codes=model_codes),
            "patch": op("Set pinned and max_parallel", {"200": reply("The model", ref("Model"))}, tags=models,
                        params=[MODEL], request=body(ref("ModelPatch")), codes=(400, 404, 409, 413)),
        },
        "/api/models/{name}/start": {"post": op(
            "Pin the model and have the policy load it (model control)",
            {"200": reply("Resident", ref("Model")), "202": reply("Loading", ref("Model"))}, tags=models,
            params=[MODEL, WAIT, query("pin", {"type": "string", "enum": ["true", "false"]}, "Pin it (default true)")],
            codes=model_codes)},
        "/api/models/{name}/stop": {"post": op(
            "Unpin the model and ask the leader to unload it (model control)",
            {"200": reply("Not resident", ref("Model")), "202": reply("Unloading", ref("Model"))}, tags=models,
            params=[MODEL, WAIT], codes=(400, 404, 409))},
        "/api/models/{name}/infer": {"post": op(
            "Submit a job and wait for its result (model control)",
            {"200": reply("Done", ref("InferResult")), "202": reply("Still running", ref("InferResult"))},
            tags=models, params=[MODEL, PRIORITY_PARAM], request=body(ref("InferRequest")),
            codes=(400, 404, 409, 413, 429, 500, 502, 504))},
        "/api/models/{name}/history": {
            "get": op("Loads, unloads, pins and failures, newest first (deployment history)",
                      {"200": reply("History", ref("History"))}, tags=models, codes=model_codes,
                      params=[MODEL, query("n", {"type": "integer", "minimum": 1, "maximum": 10000},
                                           "How many records")]),
            "delete": op("Clear the model's history records", {"200": reply("Cleared", ref("Cleared"))},
                         tags=models, params=[MODEL], codes=(404,)),
        },
    }


def _ollama_paths() -> dict[str, Any]:
    """The Ollama API, served by mm's jobs and nodes."""
    ollama = ["ollama"]
    return {
        "/api/generate": {"post": op("Ollama generate, as an mm job",
                                     {"200": {"description": "Answer (NDJSON chunks when stream is true)", "content": {
                                         JSON: {"schema": ref("GenerateResponse")}, NDJSON: {"schema": STR}}}},
                                     tags=ollama, params=JOB_HEADERS, request=body(ref("GenerateRequest")),
                                     codes=OLLAMA_ERRORS)},
        "/api/chat": {"post": op("Ollama chat, as an mm job",
                                 {"200": {"description": "Answer (NDJSON chunks when stream is true)", "content": {
                                     JSON: {"schema": ref("ChatResponse")}, NDJSON: {"schema": STR}}}},
                                 tags=ollama, params=JOB_HEADERS, request=body(ref("ChatRequest")),
                                 codes=OLLAMA_ERRORS)},
        "/api/embed": {"post": op("Ollama embed, as an mm job", {"200": reply("Embeddings", ref("EmbedResponse"))},
                                  tags=ollama, params=JOB_HEADERS, request=body(ref("EmbedRequest")),
                                  codes=OLLAMA_ERRORS)},
        "/api/tags": {"get": op("Ollama tags: every registered model", {"200": reply("Models", ref("Tags"))},
                                tags=ollama)},
        "/api/ps": {"get": op("Ollama ps: models resident on any node", {"200": reply("Resident", ref("Ps"))},
                              tags=ollama)},
        "/api/version": {"get": op("The Ollama API version mirrored", {"200": reply("Version", obj(
            {"version": STR}, ("version",)))}, tags=ollama)},
        "/api/show": {"post": op("Ollama show", {"200": reply("Model details", ANY_OBJ)}, tags=ollama,
                                 request=body(obj({"model": MODEL_NAME}, ("model",))), codes=(400, 404, 413))},
        "/api/pull": {"post": op(
            "Ollama pull: the leader has a node's runtime pull the model, which then joins the registry",
            {"200": {"description": "Progress (NDJSON lines when stream is true, else the last one)", "content": {
                JSON: {"schema": PULL_STATUS}, NDJSON: {"schema": STR}}}}, tags=ollama,
            request=body(obj({"model": PULL_NAME, "insecure": nullable(BOOL), "stream": nullable(BOOL)}, ("model",))),
            codes=(400, 404, 413, 502, 503, 504))},
        "/api/delete": {"delete": op(
            "Ollama delete, on every node listing the model; 409 while it is resident, loading, pinned or has "
            "jobs queued", {"200": reply("Deleted")}, tags=ollama,
            request=body(obj({"model": PULL_NAME}, ("model",))), codes=(400, 404, 409, 413, 502, 503, 504))},
    }


def _ops_paths() -> dict[str, Any]:
    """Operations: Prometheus metrics and this document."""
    ops = ["ops"]
    return {
        "/metrics": {"get": op("Prometheus metrics", {"200": reply("Text exposition format", STR, "text/plain")},
                               tags=ops)},
        "/openapi.json": {"get": op("This document", {"200": reply("OpenAPI 3", ANY_OBJ)}, tags=ops)},
    }


def quality_event(settings: Settings) -> dict[str, Any]:
    """A quality event: name, version, optional time and at least one of MM_QUALITY_FIELDS."""
    fields = quality.fields(settings)
    props: dict[str, Any] = {"name": QUALITY_NAME, "version": QUALITY_NAME,
                             "at": {"oneOf": [NUM, {"type": "string", "format": "date-time"}],
                                    "description": "epoch seconds or ISO 8601 (default now)"}}
    for field in fields:
        low, high = quality.RANGES.get(field, (None, None))
        props[field] = {"type": "number"} | ({"minimum": low} if low is not None else {}) | (
            {"maximum": high} if high is not None and high != float("inf") else {})
    return obj(props, ("name", "version"), extra=False, anyOf=[{"required": [f]} for f in fields],
               description="Metric fields are MM_QUALITY_FIELDS")


def schemas(settings: Settings) -> dict[str, Any]:
    wait_max = settings.gateway_wait_s
    return SCHEMAS | {
        "SubmitRequest": job_request(settings, {"model": {"type": "string", "minLength": 1}}, ("model",)),
        "InferRequest": job_request(settings, {"timeout": {
            "type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": wait_max,
            "description": "Seconds to wait for the result (max MM_GATEWAY_WAIT_S)"}}, ()),
        "QualityEvent": quality_event(settings),
    }


def document(settings: Settings, auth: bool) -> dict[str, Any]:
    """The OpenAPI document; operations require the bearer key when the gateway has keys."""
    paths = copy.deepcopy(_paths())
    if not auth:
        for item in paths.values():
            for operation in item.values():
                operation.get("responses", {}).pop("401", None)
    return {
        "openapi": "3.0.3",
        "info": {"title": "mm gateway", "version": "0.1.0",
                 "description": "mm's REST endpoints (job manager API, model monitor, quality metrics, model control, "
                                "deployment history), its Ollama-compatible proxy and /metrics. "
                                "Errors are {error, field}; field names the input at fault."},
        "paths": paths,
        "components": {"schemas": schemas(settings),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}] if auth else [],
    }


class OpenApiHandler(BaseHandler):
    async def get(self) -> None:
        self.finish(json.dumps(document(self.gw.settings, bool(self.gw.api_keys))))


def handlers(gw: Gateway) -> list[tuple]:
    return [(r"/openapi.json", OpenApiHandler, {"gw": gw})]
