"""The status page: GET / (static HTML, CSS and JS polling the JSON API; no build step, no CDN).

The page itself holds no data, so it is served without a key; every call its script makes
carries the key the user typed (kept in the browser's localStorage) when auth is on.
"""

from __future__ import annotations

from pathlib import Path

import tornado.web

from mm.gateway.base import Gateway

STATIC = Path(__file__).resolve().parent / "static"


class IndexHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-cache")
        self.finish((STATIC / "index.html").read_bytes())

    def head(self) -> None:
        """HEAD /: the liveness probe of Ollama's CLI; the page's headers without the page."""
        self.get()


class StaticHandler(tornado.web.StaticFileHandler):
    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-cache")


def handlers(gw: Gateway) -> list[tuple]:
    return [
        (r"/", IndexHandler),
        (r"/static/(.+)", StaticHandler, {"path": str(STATIC)}),
    ]
