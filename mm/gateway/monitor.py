"""Model monitor (idle shutdown's view of model activity): GET /models/active, /models/idle, /models/activity,
POST /models/<name>/report and GET /health, over :mod:`mm.activity`."""

from __future__ import annotations

from typing import Any

from mm import activity
from mm.gateway import status
from mm.gateway.base import BaseHandler, Gateway
from mm.gateway.jobs import health


def activity_dict(m: activity.ModelActivity) -> dict[str, Any]:
    return m.as_dict() | {"last_used_at": status.iso(m.last_used)}


class ActivityHandler(BaseHandler):
    def initialize(self, gw: Gateway, which: str) -> None:  # type: ignore[override]
        super().initialize(gw)
        self.which = which

    async def get(self) -> None:
        s = self.gw.settings
        fn = {"active": activity.active_models, "idle": activity.idle_models, "activity": activity.activity}[self.which]
        models = await self.run(fn, self.gw.r, s)
        self.send_json({
            "models": [activity_dict(m) for m in models], "count": len(models),
            "active_window_s": s.active_window_s, "idle_threshold_s": s.idle_threshold_s,
        })


class ReportHandler(BaseHandler):
    async def post(self, name: str) -> None:
        at = await self.run(activity.report, self.gw.r, name)
        self.send_json({"model": name, "status": "reported", "last_used": at, "last_used_at": status.iso(at)})


class MonitorHealthHandler(BaseHandler):
    public = True

    async def get(self) -> None:
        code, body = await self.run(health, self.gw.r)
        self.send_json(body, code)


def handlers(gw: Gateway) -> list[tuple]:
    args = {"gw": gw}
    return [
        (r"/models/active", ActivityHandler, args | {"which": "active"}),
        (r"/models/idle", ActivityHandler, args | {"which": "idle"}),
        (r"/models/activity", ActivityHandler, args | {"which": "activity"}),
        (r"/models/(.+)/report", ReportHandler, args),
        (r"/health", MonitorHealthHandler, args),
    ]
