"""Quality metrics server: POST /api/metrics (quality events), GET /stats/<name>/<version>."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from mm import quality
from mm.errors import ValidationError
from mm.gateway.base import ApiError, BaseHandler, Gateway

MAX_BATCH = 1000


def parse_time(name: str, raw: Any, empty_is_absent: bool = False) -> float | None:
    """Epoch seconds (a number or numeric string) or an ISO 8601 time; None if absent."""
    if raw is None or (raw == "" and empty_is_absent):
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ApiError(400, name, f"must be epoch seconds or an ISO 8601 time, not {type(raw).__name__}")
    if isinstance(raw, (int, float)):
        value = float(raw)
    else:
        try:
            value = float(raw)
        except ValueError:
            try:
                value = datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise ApiError(400, name, f"must be epoch seconds or an ISO 8601 time, not {raw!r:.60}") from None
    if not math.isfinite(value):
        raise ApiError(400, name, f"must be finite, not {raw!r:.40}")
    return value


def _event_args(event: Any, prefix: str) -> tuple[str, str, float | None, dict[str, Any]]:
    if not isinstance(event, dict):
        raise ApiError(400, prefix or "body", "must be a JSON object with name, version and metric fields")
    values = {k: v for k, v in event.items() if k not in ("name", "version", "at")}
    for required in ("name", "version"):
        if required not in event:
            raise ApiError(400, f"{prefix}{required}", "is required")
    if "at" in event and event["at"] is None:
        raise ApiError(400, f"{prefix}at", "must be epoch seconds or an ISO 8601 time (leave it out for now)")
    return event["name"], event["version"], parse_time(f"{prefix}at", event.get("at")), values


def record(gw: Gateway, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Validate every event first (nothing is stored if one is bad), then store them."""
    if "events" in body:
        if set(body) != {"events"}:
            extra = min(set(body) - {"events"})
            raise ApiError(400, extra, "a batch body holds only 'events'")
        batch = body["events"]
        if not isinstance(batch, list) or not batch:
            raise ApiError(400, "events", "must be a non-empty list of events")
        if len(batch) > MAX_BATCH:
            raise ApiError(400, "events", f"at most {MAX_BATCH} events per request, got {len(batch)}")
        prefixes = [f"events[{i}]." for i in range(len(batch))]
    else:
        batch, prefixes = [body], [""]
    known = quality.fields(gw.settings)
    parsed = []
    for event, prefix in zip(batch, prefixes, strict=True):
        name, version, at, values = _event_args(event, prefix)
        try:
            quality.validate_event(name, version, values, known)
        except ValidationError as exc:
            raise ApiError(400, prefix + exc.field, exc.message) from None
        parsed.append((name, version, at, values))
    stored = [quality.record_metric(n, v, at=at, r=gw.r, **values) for n, v, at, values in parsed]
    if "events" in body:
        return 201, {"recorded": len(stored), "events": stored}
    return 201, stored[0]


class MetricsIngestHandler(BaseHandler):
    async def post(self) -> None:
        code, body = await self.run(record, self.gw, self.json_body())
        self.send_json(body, code)


class QualityStatsHandler(BaseHandler):
    async def get(self, name: str, version: str) -> None:
        start = parse_time("start", self.get_query_argument("start", None), empty_is_absent=True)
        end = parse_time("end", self.get_query_argument("end", None), empty_is_absent=True)
        self.send_json(await self.run(quality.metric_stats, name, version, start, end, self.gw.r))


def handlers(gw: Gateway) -> list[tuple]:
    args = {"gw": gw}
    return [
        (r"/api/metrics", MetricsIngestHandler, args),
        (r"/stats/(.+)/([^/]+)", QualityStatsHandler, args),
    ]
