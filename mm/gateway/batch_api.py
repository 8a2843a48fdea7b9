"""OpenAI's Files and Batch API: ``/v1/files`` and ``/v1/batches``.

Upload a JSONL file of requests (``purpose=batch``), create a batch on it, poll the batch, read
its output file. Each request becomes an mm job at low priority (``metadata.priority`` overrides
it). The files live in ``MM_FILES_DIR``; the batches in Redis; :mod:`mm.batches.advance` moves
them along on a thread of every gateway.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import tornado.httputil

from mm.batches import records
from mm.batches.advance import Advancer
from mm.batches.files import FileStore
from mm.batches.lines import ENDPOINTS, raw_lines
from mm.errors import ValidationError
from mm.gateway.base import Gateway
from mm.gateway.openai_api import OpenAIErrors
from mm.gateway.openai_shape import OpenAIError, bad

MULTIPART_SLACK = 64 * 1024  # a multipart body's headers and boundaries around the file
MAX_PAGE = 100


def start(gw: Gateway) -> Advancer:
    """The gateway's file store and batch advancer (on its own thread); stop it with ``advancer.stop.set()``."""
    files = FileStore(gw.settings.files_dir)
    advancer = Advancer(gw.settings, gw.r, files, owner=f"{socket.gethostname()}:{os.getpid()}")
    gw.extras["files"], gw.extras["batches"] = files, advancer
    threading.Thread(target=advancer.run, name="mm-batches", daemon=True).start()
    return advancer


class BatchBase(OpenAIErrors):
    """What the files and batch handlers share: the file store, and 404s in OpenAI's shape."""

    @property
    def files(self) -> FileStore:
        return self.gw.extras["files"]

    def file_or_404(self, file_id: str) -> dict[str, Any]:
        found = self.files.get(file_id)
        if found is None:
            raise OpenAIError(404, f"No such File object: {file_id}", param="id", code="file_not_found")
        return found

    def batch_or_404(self, batch_id: str) -> dict[str, str]:
        found = records.get(self.gw.r, batch_id)
        if found is None:
            raise OpenAIError(404, f"No such Batch object: {batch_id}", param="id", code="batch_not_found")
        return found

    def batch_view(self, record: dict[str, str]) -> dict[str, Any]:
        return records.openai_object(record, records.counts(self.gw.r, record["id"]))

    def wake(self) -> None:
        advancer: Advancer | None = self.gw.extras.get("batches")
        if advancer is not None:
            advancer.wake.set()


class FilesHandler(BatchBase):
    """``POST /v1/files`` (multipart ``file`` and ``purpose=batch``); ``GET /v1/files``."""

    def body_limit(self) -> int:
        return self.settings_.max_file_bytes + MULTIPART_SLACK

    async def post(self) -> None:
        fields: dict[str, list[bytes]] = {}
        uploads: dict[str, list[tornado.httputil.HTTPFile]] = {}
        tornado.httputil.parse_body_arguments(self.request.headers.get("Content-Type", ""), self.body, fields,
                                              uploads)
        purpose = fields.get("purpose", [b""])[0].decode(errors="replace")
        if purpose != "batch":
            raise bad("purpose", f"purpose must be 'batch', not {purpose!r:.40}")
        if not uploads.get("file"):
            raise bad("file", "a multipart field 'file' with the JSONL file is required")
        upload = uploads["file"][0]
        if len(upload.body) > self.settings_.max_file_bytes:
            raise OpenAIError(413, f"the file is {len(upload.body)} bytes, over the limit of "
                                   f"{self.settings_.max_file_bytes} (MM_MAX_FILE_BYTES)", param="file")
        requests = len(raw_lines(upload.body))
        if requests > self.settings_.batch_max_lines:
            raise bad("file", f"the file has {requests} requests; a batch holds at most "
                              f"{self.settings_.batch_max_lines} (MM_BATCH_MAX_LINES)")
        self.send_json(await self.run(self.files.create, upload.body, upload.filename or "upload.jsonl", purpose))

    async def get(self) -> None:
        purpose = self.get_query_argument("purpose", None)
        found = [f for f in await self.run(lambda: list(self.files.all())) if purpose in (None, f["purpose"])]
        self.send_json({"object": "list", "data": found, "has_more": False})


class FileHandler(BatchBase):
    """``GET`` and ``DELETE /v1/files/{id}``."""

    async def get(self, file_id: str) -> None:
        self.send_json(await self.run(self.file_or_404, file_id))

    async def delete(self, file_id: str) -> None:
        await self.run(self.file_or_404, file_id)
        await self.run(self.files.delete, file_id)
        self.send_json({"id": file_id, "object": "file", "deleted": True})


class FileContentHandler(BatchBase):
    """``GET /v1/files/{id}/content``: the file's bytes."""

    async def get(self, file_id: str) -> None:
        meta = await self.run(self.file_or_404, file_id)
        data = await self.run(self.files.content, file_id)
        if data is None:  # deleted meanwhile
            raise OpenAIError(404, f"No such File object: {file_id}", param="id", code="file_not_found")
        self.set_header("Content-Type", "application/jsonl")
        self.set_header("Content-Disposition", f'attachment; filename="{meta["filename"]}"')
        self.finish(data)


class BatchesHandler(BatchBase):
    """``POST /v1/batches`` (create) and ``GET /v1/batches`` (newest first, ``after`` and ``limit``)."""

    async def post(self) -> None:
        body = self.json_body()
        input_file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise bad("endpoint", f"endpoint must be one of {', '.join(ENDPOINTS)}, not {endpoint!r:.60}")
        if not isinstance(input_file_id, str):
            raise bad("input_file_id", "input_file_id is required")
        meta = await self.run(self.file_or_404, input_file_id)
        if meta["purpose"] != "batch":
            raise bad("input_file_id", f"file {input_file_id} has purpose {meta['purpose']!r}, not 'batch'")
        window = body.get("completion_window", "24h")
        try:
            records.window_s(window)
            metadata = records.check_metadata(body.get("metadata"))
        except ValidationError as exc:
            raise bad(exc.field, f"{exc.field} {exc.message}") from None
        batch_id = await self.run(records.create, self.gw.r, input_file_id, endpoint, window, metadata)
        created = await self.run(lambda: self.batch_view(self.batch_or_404(batch_id)))
        self.wake()  # after reading it: the answer is the batch as created (validating), as OpenAI's is
        self.send_json(created)

    async def get(self) -> None:
        limit = int(self.query_number("limit", 20, minimum=1, maximum=MAX_PAGE, integer=True))
        data, more = await self.run(self.listing, self.get_query_argument("after", None), limit)
        self.send_json({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                        "last_id": data[-1]["id"] if data else None, "has_more": more})


    def listing(self, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        ids, more = records.page(self.gw.r, after, limit)
        found = (records.get(self.gw.r, batch_id) for batch_id in ids)
        return [self.batch_view(record) for record in found if record], more


class BatchHandler(BatchBase):
    """``GET /v1/batches/{id}``."""

    async def get(self, batch_id: str) -> None:
        self.send_json(await self.run(lambda: self.batch_view(self.batch_or_404(batch_id))))


class BatchCancelHandler(BatchBase):
    """``POST /v1/batches/{id}/cancel``: queued requests are dropped, running ones finish."""

    async def post(self, batch_id: str) -> None:
        record = await self.run(self.batch_or_404, batch_id)
        if record["status"] in records.FINAL:
            raise bad("id", f"batch {batch_id} is already {record['status']}", code="batch_already_final")
        if record["status"] != "cancelling":
            await self.run(records.stop, self.gw.r, batch_id, "cancelled", self.settings_.result_expires_s)
            self.wake()
        self.send_json(await self.run(lambda: self.batch_view(self.batch_or_404(batch_id))))


def handlers(gw: Gateway) -> list[tuple]:
    args = {"gw": gw}
    return [
        (r"/v1/files", FilesHandler, args),
        (r"/v1/files/([^/]+)", FileHandler, args),
        (r"/v1/files/([^/]+)/content", FileContentHandler, args),
        (r"/v1/batches", BatchesHandler, args),
        (r"/v1/batches/([^/]+)", BatchHandler, args),
        (r"/v1/batches/([^/]+)/cancel", BatchCancelHandler, args),
    ]
