"""Per-model parallel slots (Ollama's OLLAMA_NUM_PARALLEL): at most N at once, the rest FIFO."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class FifoSlots:
    """A counting semaphore that hands free slots to waiters strictly in arrival order."""

    def __init__(self, size: int):
        self.size = size
        self.busy = 0
        self.peak = 0  # most slots ever busy at once (for logs)
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self) -> None:
        """Take a slot, waiting behind earlier callers when all are busy."""
        if self.busy < self.size and not self._waiters:
            self._take()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        """Give the slot to the oldest waiter, or free it."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes over: busy stays the same
                return
        self.busy -= 1

    def _take(self) -> None:
        self.busy += 1
        self.peak = max(self.peak, self.busy)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """``async with slots.hold():`` run while holding one slot."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()
