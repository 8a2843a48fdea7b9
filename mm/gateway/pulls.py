"""Ollama's ``POST /api/pull`` and ``DELETE /api/delete``, run by the leader on the nodes.

A pull goes to one node's runtime (one that lists the model already, else the one with the most
free memory) and its progress comes back as Ollama streams it (``pulling manifest``, ``downloading
<digest>`` with ``total``/``completed``, ``success``); once it succeeds the model is in the
registry and can be used at once. A delete goes to every node whose runtime lists the model and is
refused with a 409 while the model is resident, being loaded, pinned, or has jobs queued.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from mm import model_ops
from mm.gateway.base import ApiError, BaseHandler, Gateway
from mm.gateway.waiting import in_thread

MAX_NAME_CHARS = 256


def model_field(body: dict[str, Any]) -> str:
    """The model named by an Ollama pull or delete body (``model``, or the older ``name``)."""
    model = body.get("model") or body.get("name")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model", "model is required")
    if len(model) > MAX_NAME_CHARS:
        raise ApiError(400, "model", f"is over {MAX_NAME_CHARS} characters")
    return model


class ModelOpHandler(BaseHandler):
    """Files a pull or delete for the leader and follows its stream."""

    async def progress(self, op: str, model: str) -> AsyncIterator[dict[str, Any]]:
        """The operation's progress lines, with its failure as an :class:`ApiError`."""
        r, wait_s = self.gw.r, self.gw.settings.gateway_wait_s
        try:
            op_id = await self.run(model_ops.request, r, op, model)
        except model_ops.ModelOpError as exc:
            raise ApiError(exc.status, "model", exc.message) from None
        self.set_header("X-MM-Op-Id", op_id)
        lines = in_thread(lambda: model_ops.follow(r, op_id, wait_s, lambda: self.client_gone),
                          self.gw.stream_executor)
        try:
            async for line in lines:
                yield line
        except model_ops.ModelOpError as exc:
            raise ApiError(exc.status, "model", exc.message) from None
        except TimeoutError:
            await self.run(model_ops.withdraw, r, op_id)
            raise ApiError(504, "model", f"{op} {model}: nothing heard from the leader or the node "
                                         f"within {wait_s:.0f}s") from None
        finally:
            await lines.aclose()


class PullHandler(ModelOpHandler):
    async def post(self) -> None:
        body = self.json_body()
        model = model_field(body)
        for flag in ("stream", "insecure"):
            if body.get(flag) is not None and not isinstance(body[flag], bool):
                raise ApiError(400, flag, f"must be true or false, not {body[flag]!r:.40}")
        stream = body.get("stream", True)
        last: dict[str, Any] = {}
        async for line in self.progress("pull", model):
            if self.client_gone:
                return
            if stream is not False:
                await self.send_line(line)
            last = line
        if stream is False:
            self.send_json(last or {"status": "success"})
        elif not self._finished and not self.client_gone:
            self.finish()


class DeleteHandler(ModelOpHandler):
    async def delete(self) -> None:
        model = model_field(self.json_body())
        async for _line in self.progress("delete", model):
            pass
        self.finish()  # Ollama answers a delete with 200 and no body


def handlers(gw: Gateway) -> list[tuple]:
    args = {"gw": gw}
    return [
        (r"/api/pull", PullHandler, args),
        (r"/api/delete", DeleteHandler, args),
    ]
