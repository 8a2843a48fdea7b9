"""Redis replies as mm's clients answer them, typed.

mm's clients (:func:`mm.store.connect`) do not decode responses: they answer bytes. redis-py's
types cover every client and command, so they also allow ``str`` and, for stream entries, an
entry without an id or fields, or no reply at all. These helpers narrow a reply to what mm's
clients return, in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

if TYPE_CHECKING:
    import redis
    from redis.typing import StreamRangeResponse, XReadResponse, ZSetRangeResponse

T = TypeVar("T")

# A stream entry: its id and its fields.
Entry = tuple[bytes, dict[bytes, bytes]]


def transacted(r: redis.Redis, func: Callable[[redis.client.Pipeline], T], *watches: str) -> T:
    """What ``func`` returns, run as ``r.transaction(func, *watches, value_from_callable=True)``:
    under WATCH of ``watches``, again until no watched key changed. (redis-py types ``func`` as
    returning None, and the call's value as the pipeline's results.)"""
    value = r.transaction(func, *watches, value_from_callable=True)  # type: ignore[arg-type]
    return cast(T, value)


def text(
reply: bytes | str) -> str:
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

