"""The ack ledger: which cursors may be committed, given which records the collector settled.

Pure bookkeeping (no asyncio, no I/O), so the one invariant of shared/ARCHITECTURE.md can be
property-tested on its own: a span's cursor is offered for commit only once every record of that
span *and of every span opened before it* was settled, i.e. acknowledged, or rejected for good
(a record the collector refuses is reported and skipped, never retried forever). Acknowledgements
may come in any order and in any parts; the offered cursors come out in queue order, the latest
per key, each at most once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")

Part = tuple[int, int, int]
"""``(span id, start, stop)``: records ``start..stop-1`` of one span."""


class _OpenSpan:
    __slots__ = ("cursor", "key", "nrecords", "unsettled")

    def __init__(self, key: str, cursor: str | None, nrecords: int) -> None:
        self.key = key
        self.cursor = cursor
        self.nrecords = nrecords
        self.unsettled = nrecords


class AckLedger:
    """Spans in, in queue order; settled record ranges in, in any order; committable cursors out.

    Each record must be settled once: settling more records than a span holds is a bug in the
    caller and raises :class:`ValueError` rather than committing a cursor too early.
    """

    def __init__(self) -> None:
        self._open: dict[int, _OpenSpan] = {}
        self._queue: deque[_OpenSpan] = deque()
        self._next_id = 0
        self._per_key: dict[str, int] = {}  # spans in the queue, by key: a handoff waits for 0

    def open(self, key: str, cursor: str | None, nrecords: int) -> int:
        """Add a span (``cursor`` None: it moves no cursor) and return its id for :meth:`ack`."""
        if nrecords < 0:
            raise ValueError(f"span of {key!r}: negative record count {nrecords}")
        span_id = self._next_id
        self._next_id += 1
        span = _OpenSpan(key, cursor, nrecords)
        if nrecords:
            self._open[span_id] = span
        self._queue.append(span)
        self._per_key[key] = self._per_key.get(key, 0) + 1
        return span_id

    def ack(self, parts: Iterable[Part]) -> dict[str, str]:
        """The collector acknowledged ``parts``: return the cursors that may now be committed."""
        self._settle(parts)
        return self.ready()

    def reject(self, parts: Iterable[Part]) -> dict[str, str]:
        """The collector refused ``parts`` for good: they were reported and are skipped, so for
        the commit order they count as done (else one bad record would stall its log forever)."""
        self._settle(parts)
        return self.ready()

    def ready(self) -> dict[str, str]:
        """Close the fully settled spans at the head of the queue; the latest cursor per key."""
        cursors: dict[str, str] = {}
        queue = self._queue
        while queue and queue[0].unsettled == 0:
            span = queue.popleft()
            left = self._per_key[span.key] - 1
            if left:
                self._per_key[span.key] = left
            else:
                del self._per_key[span.key]
            if span.cursor is not None:
                cursors[span.key] = span.cursor
        return cursors

    def holds(self, key: str) -> bool:
        """Whether a span of ``key`` has not had its cursor offered yet."""
        return key in self._per_key

    def __len__(self) -> int:
        """Spans whose cursor was not offered yet."""
        return len(self._queue)

    def _settle(self, parts: Iterable[Part]) -> None:
        for span_id, start, stop in parts:
            span = self._open.get(span_id)
            if span is None:
                raise ValueError(f"span {span_id} is not open (unknown, or settled in full already)")
            if not 0 <= start < stop <= span.nrecords:
                raise ValueError(f"span {span_id} of {span.key!r}: bad record range {start}..{stop} of {span.nrecords}")
            if stop - start > span.unsettled:
                raise ValueError(f"span {span_id} of {span.key!r}: records {start}..{stop} settled twice")
            span.unsettled -= stop - start
            if span.unsettled == 0:
                del self._open[span_id]


def split_parts(parts: Sequence[tuple[T, int, int]]) -> tuple[list[tuple[T, int, int]], list[tuple[T, int, int]]]:
    """Cut a batch of ``(span, start, stop)`` ranges into two halves by record count, in order.

    A refused batch is halved again and again until the refused records stand alone.
    """
    total = sum(stop - start for _, start, stop in parts)
    budget = total // 2
    first: list[tuple[T, int, int]] = []
    second: list[tuple[T, int, int]] = []
    for span, start, stop in parts:
        take = min(budget, stop - start)
        if take:
            first.append((span, start, start + take))
            budget -= take
        if start + take < stop:
            second.append((span, start + take, stop))
    return first, second
