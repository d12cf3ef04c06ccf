"""Reading every page of an event window, whichever way the server counts ``offset``.

Some server versions take ``offset`` as an item index, others as a page index. The first page
(offset 0) means the same in both; the mode is detected once, when a second page is first
needed, and remembered in an :class:`OffsetMode` object the source shares among its readers
(one server, one mode), never in the source itself.

An idle window costs one request, not one per page: after a scan that read exactly the
``total`` its first answer announced, the pager remembers a :class:`WindowMark` (the window's
start, that total, its first page); a later scan of the same window whose first answer matches
it stops there, since nothing was added (events are not deleted while inside the lookback
window, and a late one raises the total).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

from collector_plugin.sources.modelarts import endpoints
from collector_plugin.sources.modelarts.client import ModelArtsClient
from collector_plugin.sources.modelarts.events.model import Event, EventPage

END_MARGIN_MS = 86_400_000  # end_time = now + 1 day: a server clock ahead of ours loses nothing
Mode = Literal["item", "page"]


@dataclass
class OffsetMode:
    """What ``offset`` means on this server, once known (shared by every reader of a source)."""

    mode: Mode | None = None


@dataclass(frozen=True)
class Page:
    """One answer: its events, whether more may follow, and the ``total`` it announced."""

    events: list[Event]
    more: bool
    total: int | None


@dataclass(frozen=True)
class WindowMark:
    """A window as last read to its end: its start, the total announced, its first page's events."""

    start: int
    total: int
    first: Counter[tuple[int, str]]

    @classmethod
    def of(cls, start: int, total: int, first: Sequence[Event]) -> WindowMark:
        return cls(start, total, Counter((e.time_ms, e.digest()) for e in first))  # ties may come in any order


def _same(a: Sequence[Event], b: Sequence[Event]) -> bool:
    return len(a) == len(b) and all(x == y for x, y in zip(a, b, strict=True))


def ascending(events: Sequence[Event]) -> bool:
    return all(a.time_ms <= b.time_ms for a, b in pairwise(events))


class EventPager:
    """Fetches the pages of one job's event window ``[floor, now + 1 day]``, ascending."""

    def __init__(self, client: ModelArtsClient, job_id: str, page_size: int, offsets: OffsetMode) -> None:
        self._client = client
        self._path = client.path(endpoints.EVENTS, training_job_id=job_id)
        self._limit = page_size
        self._offsets = offsets
        self._mark: WindowMark | None = None

    async def _fetch(self, offset: int, window: tuple[int, int] | None) -> tuple[list[Event], int | None]:
        params: dict[str, str | int] = {"offset": offset, "limit": self._limit, "order": "asc"}
        if window is not None:
            params["start_time"], params["end_time"] = window
        page = await self._client.get_model(self._path, EventPage, endpoint=endpoints.EVENTS, params=params)
        return [Event.of(e) for e in page.events or []], page.total

    async def pages(self, floor: int, now_ms: int) -> AsyncIterator[Page]:
        """Every page of the window from ``floor`` (just the first when it is unchanged).

        The first page (offset 0) means the same in both offset modes; the mode is detected
        once per source when a second page is first needed (see :meth:`_detect_mode`).
        """
        window = None if floor <= 0 else (floor, max(now_ms, floor) + END_MARGIN_MS)
        first, total = await self._fetch(0, window)
        mark, self._mark = self._mark, None
        if total is not None and mark is not None and mark == WindowMark.of(floor, total, first):
            self._mark = mark
            yield Page(first, False, total)
            return
        read, steady = 0, True
        async for page in self._scan(first, total, window):
            read += len(page.events)
            steady = steady and page.total == total
            yield page
        if total is not None and steady and read == total:  # read to the end what the first answer counted
            self._mark = WindowMark.of(floor, total, first)

    async def _scan(self, first: list[Event], total: int | None, window: tuple[int, int] | None) -> AsyncIterator[Page]:
        limit = self._limit
        full = len(first) >= limit
        yield Page(first, full, total)
        if not full:
            return
        mode = self._offsets.mode
        index = 1
        if mode is None:
            mode, second, total = await self._detect_mode(first, total, window)
            self._offsets.mode = mode
            if second is not None:
                full = len(second) >= limit
                yield Page(second, full, total)
                if not full:
                    return
                index = 2
        while True:
            events, total = await self._fetch(index * limit if mode == "item" else index, window)
            full = len(events) >= limit
            yield Page(events, full, total)
            if not full or (total is not None and index * limit > total + limit):
                return
            index += 1

    async def _detect_mode(
        self, first: list[Event], total: int | None, window: tuple[int, int] | None
    ) -> tuple[Mode, list[Event] | None, int | None]:
        """Ask for ``offset=1``: an item index answers page 0 shifted by one, a page index page 1.

        When the answer is page 0 shifted by one it is an item index, unless the events are so
        alike (all at one timestamp) that page 1 could look the same; then ask for the page
        index just past ``total``, where a page index finds nothing and an item index finds
        events. Returns the mode, in page mode page 1 (already fetched), and the latest total.
        """
        limit = self._limit
        if limit == 1:
            return "item", None, total
        probe, total2 = await self._fetch(1, window)
        if not _same(probe[: limit - 1], first[1:]):
            return "page", probe, total2
        if first[1].time_ms != first[-1].time_ms:
            return "item", None, total2
        total = total2 if total2 is not None else total
        if total is None or total <= limit:
            return "item", None, total
        past = math.ceil(total / limit)
        beyond, total3 = await self._fetch(past + 1 if past + 1 < total else past, window)
        if beyond:
            return "item", None, total3
        return "page", None, total3


__all__ = ["END_MARGIN_MS", "EventPager", "OffsetMode", "Page", "WindowMark", "ascending"]
