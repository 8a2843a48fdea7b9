"""Pure helpers of the runtime: keep_alive parsing, byte sizes, stop sequences, FIFO slots."""

from __future__ import annotations

import asyncio

import pytest

from mm.runtime.durations import FOREVER, parse_keep_alive, rfc3339
from mm.runtime.engines.text import StopMatcher
from mm.runtime.errors import GiB, MiB, OutOfMemory, parse_bytes
from mm.runtime.slots import FifoSlots


@pytest.mark.parametrize("value,seconds", [
    (None, 300.0), ("5m", 300.0), ("1h30m", 5400.0), ("10s", 10.0), ("1.5h", 5400.0), ("500ms", 0.5),
    ("2m30.5s", 150.5), ("0", 0.0), (0, 0.0), ("300", 300.0), (30, 30.0), (2.5, 2.5),
    (-1, FOREVER), ("-1", FOREVER), ("-1m", FOREVER), ("-5m30s", FOREVER),
])
def test_keep_alive_forms_parse_to_seconds(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "m", "", "1d", True, [5], {"m": 5}])
def test_invalid_keep_alive_is_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_keep_alive(value)


def test_rfc3339_is_utc_with_a_trimmed_fraction() -> None:
    stamp = rfc3339()

    assert stamp.endswith("Z") and "T" in stamp and not stamp[:-1].endswith("0" * 6)


@pytest.mark.parametrize("text,size", [
    ("8589934592", 8 * GiB), ("8GiB", 8 * GiB), ("512MiB", 512 * MiB), ("8GB", 8_000_000_000),
    ("1.5 GiB", int(1.5 * GiB)),
])
def test_byte_sizes_parse_with_units(text: str, size: int) -> None:
    assert parse_bytes(text) == size


def test_out_of_memory_reads_like_ollama() -> None:
    assert str(OutOfMemory(int(7.5 * GiB), int(3.2 * GiB))) == (
        "model requires more system memory (7.5 GiB) than is available (3.2 GiB)")


def test_a_stop_sequence_split_across_pieces_is_held_back_and_cut() -> None:
    matcher = StopMatcher(["END"])

    out = [matcher.feed(p) for p in ["hello ", "wor", "ld E", "N", "D tail"]]

    assert out == [("hello ", False), ("wor", False), ("ld ", False), ("", False), ("", True)]


def test_held_back_text_that_is_not_a_stop_comes_out_later() -> None:
    matcher = StopMatcher(["\n\n"])

    assert matcher.feed("line\n") == ("line", False)
    assert matcher.feed("more") == ("\nmore", False)
    assert matcher.feed("\n") == ("", False)
    assert matcher.flush() == "\n"


def test_slots_admit_at_most_their_size_and_serve_waiters_in_order() -> None:
    async def scenario() -> tuple[list[int], int]:
        slots, order = FifoSlots(2), []

        async def job(i: int) -> None:
            async with slots.hold():
                order.append(i)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(job(i) for i in range(6)))
        return order, slots.peak

    order, peak = asyncio.run(scenario())

    assert order == list(range(6)) and peak == 2


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    async def scenario() -> int:
        slots = FifoSlots(1)
        await slots.acquire()
        waiter = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        slots.release()
        return slots.busy

    assert asyncio.run(scenario()) == 0
