"""Redis replies as mm's clients answer them, typed.

mm's clients (:func:`mm.store.connect`) do not decode responses: they answer bytes. redis-py's
types cover every client and command, so they also allow ``str`` and, for stream entries, an
entry without an id or fields, or no reply at all. These helpers narrow a reply to what mm's
clients return, in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from redis.typing import StreamRangeResponse, XReadResponse, ZSetRangeResponse

# A stream entry: its id and its fields.
Entry = tuple[bytes, dict[bytes, bytes]]


def text(reply: bytes | str) -> str:
    """A reply (a value, a key, a member, an entry id) as text."""
    return reply.decode() if isinstance(reply, bytes) else reply



def entries(
reply: StreamRangeResponse | None) -> list[Entry]:
    """The entries of an XRANGE or XREVRANGE reply: a list of entries that each have an id and fields."""
    return cast("list[Entry]", reply or [])


def streams(reply: XReadResponse | None) -> list[tuple[bytes, list[Entry]]]:
    """An XREAD reply: each stream's name and its new entries; none when the wait ended empty."""
    return cast("list[tuple[bytes, list[Entry]]]", reply or [])


def members(
reply: ZSetRangeResponse) -> list[bytes]:
    """The members of a ZRANGE or ZRANGEBYSCORE reply without scores."""
    return cast("list[bytes]", reply)

