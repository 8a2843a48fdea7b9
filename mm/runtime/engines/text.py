"""Engine-neutral text helpers: prompt rendering for the sim, token counting, stop sequences."""

from __future__ import annotations

import re

from mm.runtime.engines.base import GenerationJob

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """A deterministic token count: words and punctuation marks (at least 1)."""
    return max(1, len(_TOKEN.findall(text)))


def render_prompt(job: GenerationJob) -> str:
    """The whole prompt a model would see, in a neutral chat template."""
    if job.is_chat:
        parts = [f"<|{m.role}|>{m.content}" for m in job.messages or []]
        if job.system:
            parts.insert(0, f"<|system|>{job.system}")
        return "\n".join(parts) + "\n<|assistant|>"
    if job.raw:
        return job.prompt
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
