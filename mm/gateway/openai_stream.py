"""A job's Ollama-shaped stream chunks as OpenAI's server-sent chunk objects (no I/O)."""

from __future__ import annotations

from typing import Any

from mm.gateway.openai_shape import CHAT, finish_reason, openai_tool_calls, usage


class StreamShaper:
    """Turns a job's Ollama-shaped stream chunks into OpenAI's SSE chunk objects (chat or completions).

    Feed every worker chunk to :meth:`chunks`; the final one (``done: true``) also yields the chunk
    with ``finish_reason`` and, with ``include_usage``, the usage chunk (empty ``choices``).
    """

    def __init__(self, endpoint: str, model: str, job_id: str, created: int, include_usage: bool = False):
        self.chat = endpoint == CHAT
        self.model = model
        self.job_id = job_id
        self.created = created
        self.include_usage = include_usage
        self.started = False
        self.calls = 0  # tool calls sent so far

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": f"{'chatcmpl' if self.chat else 'cmpl'}-{self.job_id}",
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created, "model": self.model, "system_fingerprint": "mm", "choices": choices}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _choice(self, text: str, finish: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        delta: dict[str, Any] = {} if self.started else {"role": "assistant"}
        if text or not self.started:
            delta["content"] = text
        self.started = True
        return {"index": 0, "delta": delta | (extra or {}), "logprobs": None, "finish_reason": finish}

    def chunks(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The OpenAI chunks for one worker chunk (none for an empty intermediate one)."""
        message = chunk.get("message") or {}
        text = message.get("content", "") if self.chat else chunk.get("response", "")
        extra: dict[str, Any] = {}
        calls = message.get("tool_calls") or []
        if calls:
            converted = openai_tool_calls(calls, self.job_id, indexed=True)
            extra["tool_calls"] = [dict(c, index=c["index"] + self.calls) for c in converted]
            self.calls += len(calls)
        if message.get("thinking"):
            extra["reasoning"] = message["thinking"]
        out = []
        if text or extra or (self.chat and not self.started):
            out.append(self._chunk([self._choice(text or "", None, extra)]))
        if chunk.get("done"):
            out.append(self._chunk([self._choice("", finish_reason(chunk.get("done_reason"), self.calls > 0))]))
            if self.include_usage:
                out.append(self._chunk([]) | {"usage": usage(chunk)})
        return out
