"""Poll slots: how many polls read at once, handed out most urgent first.

A poll holds what it read (a span's records) until the pipeline takes it, and the pipeline makes
readers wait when it is full. Without a bound on polls, every target would read and wait at
once: 3,000 tasks on a saturated core held 850 MB of records in waiting spans. With at most
``MAX_POLLS`` polls reading, what waits outside the queue is bounded too, and the slots go as the
API budget's calls do: never-polled targets first, then likely news, then idle ones by how long
they waited (:class:`~collector_plugin.budget.CallTag`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from collector_plugin.budget import CallTag

MAX_POLLS = 64  # four times the default API concurrency: enough to keep it busy, OBS reads included


class PollSlots:
    """A semaphore whose waiters are served by :class:`CallTag` urgency, then arrival."""

    def __init__(self, slots: int = MAX_POLLS) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._free = slots
        self._waiters: list[tuple[tuple[int, float, int], asyncio.Future[None]]] = []
        self._order = itertools.count()

    @asynccontextmanager
    async def slot(self, tag: CallTag) -> AsyncIterator[None]:
        await self._acquire(tag)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, tag: CallTag) -> None:
        if self._free:  # free slots only while nobody waits (a release hands its slot on)
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        key = (int(tag.priority), -(tag.since_last_poll or 0.0), next(self._order))
        heapq.heappush(self._waiters, (key, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiters:
            _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1


__all__ = ["MAX_POLLS", "PollSlots"]
