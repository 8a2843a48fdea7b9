"""Engine-neutral text helpers: prompt rendering for the sim, token counting, stop sequences."""

from __future__ import annotations

import json
import re

from mm.runtime.engines.base import GenerationJob, Message

_TOKEN = re.compile(r"\w+|[^\w\s]")


_TEMPLATE_FIELD = re.compile(r"\{\{-?\s*\.(Prompt|System|Suffix)\s*-?\}\}")


def count_tokens(text: str) -> int:
    """A deterministic token count: words and punctuation marks (at least 1)."""
    return max(1, len(_TOKEN.findall(text)))


def tokens(text: str) -> list[str]:
    """The sim's tokens of ``text`` (what :func:`count_tokens` counts)."""
    return _TOKEN.findall(text)


def _message(m: Message) -> str:
    text = f"<|{m.role}|>{m.content}"
    if m.tool_calls:
        text += json.dumps([c.get("function") for c in m.tool_calls])
    return text


def render_template(job: GenerationJob) -> str:
    """The request's own ``template`` with its ``{{ .Prompt }}``, ``{{ .System }}`` and ``{{ .Suffix }}`` filled in."""
    values = {"Prompt": job.prompt, "System": job.system, "Suffix": job.suffix}
    return _TEMPLATE_FIELD.sub(lambda m: values[m.group(1)], job.template)


def render_prompt(job: GenerationJob) -> str:
    """The whole prompt a model would see, in a neutral chat template (or the request's ``template``,
    whose ``{{ .Prompt }}``, ``{{ .System }}`` and ``{{ .Suffix }}`` are filled in)."""
    if job.is_chat:
        parts = [_message(m) for m in job.messages or []]
        if job.system:
            parts.insert(0, f"<|system|>{job.system}")
        if job.tools:
            parts.insert(0, f"<|tools|>{json.dumps(job.tools)}")
        return "\n".join(parts) + "\n<|assistant|>"
    if job.raw:
        return job.prompt
    if job.template:
        return render_template(job)
    if job.suffix:
        return f"<|fim_prefix|>{job.prompt}<|fim_suffix|>{job.suffix}<|fim_middle|>"
    head = f"<|system|>{job.system}\n" if job.system else ""
    return f"{head}<|user|>{job.prompt}\n<|assistant|>"


class StopMatcher:
    """Cut generated text at the first stop sequence, holding back text that may start one.

    Feed pieces in order; each call returns the text safe to emit now and whether a stop
    sequence was hit (after which nothing more should be fed).
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add ``piece``; return ``(text to emit, stopped)``."""
        if not self.stops:
            return piece, False
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return text[:cut], True
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """Text still held back when generation ends without a stop."""
        held, self._held = self._held, ""
        return held
