"""Ollama's time formats: ``keep_alive`` durations, nanosecond counts and RFC 3339 timestamps."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

DEFAULT_KEEP_ALIVE = 300.0  # Ollama's default: five minutes
FOREVER = math.inf  # keep_alive < 0: never expire

# Go's time.ParseDuration units, in seconds.
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")

# Go's largest time.Duration (~292 years): what Ollama adds to "now" for a model kept forever.
_GO_MAX_DURATION = timedelta(microseconds=(2**63 - 1) // 1000)


def parse_go_duration(text: str) -> float:
    """Parse a Go duration string such as ``"1h30m"``, ``"5m"``, ``"10s"`` or ``"-1m"`` into seconds.

    Raises:
        ValueError: with Go's message (``time: invalid duration "x"``) when ``text`` is not a duration.
    """
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    total, pos = 0.0, 0
    while pos < len(s):
        match = _PART.match(s, pos)
        if match is None:
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def parse_keep_alive(value: object) -> float:
    """Turn a request's ``keep_alive`` into seconds the model stays loaded after the request.

    Accepts what Ollama accepts: ``None`` (absent: 5 minutes), a number of seconds, a Go duration
    string (``"5m"``, ``"1h30m"``), or a numeric string (``"300"``, ``"-1"``). Any negative value
    means forever (:data:`FOREVER`); ``0`` means unload as soon as the request ends.

    Raises:
        ValueError: for a value that is neither a number nor a duration string.
    """
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, bool):
        raise ValueError("json: cannot unmarshal bool into Go value of type time.Duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = float(value) if _NUMBER.fullmatch(value.strip()) else parse_go_duration(value)
    else:
        raise ValueError(f"json: cannot unmarshal {type(value).__name__} into Go value of type time.Duration")
    if math.isnan(seconds):
        raise ValueError(f'time: invalid duration "{value}"')
    return FOREVER if seconds < 0 else seconds


def format_duration(seconds: float) -> str:
    """A short human form of a keep_alive for logs: ``"forever"``, ``"0s"``, ``"5m0s"``."""
    if math.isinf(seconds):
        return "forever"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    frac = seconds - whole
    tail = f"{secs + frac:g}s"
    if hours:
        return f"{hours}h{minutes}m{tail}"
    if minutes:
        return f"{minutes}m{tail}"
    return tail


def ns(seconds: float) -> int:
    """Seconds to integer nanoseconds, as every Ollama duration field is reported."""
    return max(0, int(round(seconds * 1e9)))


def rfc3339(moment: datetime | None = None) -> str:
    """Format a UTC time like Go's RFC3339Nano (fraction trimmed, ``Z`` suffix); ``None`` is now."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def expiry_time(seconds_from_now: float) -> datetime:
    """The wall-clock time ``seconds_from_now`` ahead; forever maps to now + Go's max duration."""
    now = datetime.now(UTC)
    if math.isinf(seconds_from_now):
        return now + _GO_MAX_DURATION
    return now + timedelta(seconds=max(0.0, seconds_from_now))
