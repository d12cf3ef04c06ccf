"""Which events of a scan are new, and the bounded cursor state (pure: no I/O)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from collector_plugin.api import CursorCodec
from collector_plugin.sources.modelarts.events.model import Event
from collector_plugin.sources.modelarts.records import EVENTS_SOURCE

MAX_SEEN = 2000  # identities kept in a cursor (~40 KB of JSON), besides those of the newest time
MAX_SEEN_NEWEST = 10 * MAX_SEEN  # ...which are kept too, up to this many (a burst in one second)
CODEC = CursorCodec(EVENTS_SOURCE, version=1)


@dataclass
class EventTracker:
    """Decides which events of a scan are new and keeps the bounded cursor state.

    Pure (no I/O): a scan is ``begin_scan()``, ``accept()`` for each event in server order,
    ``page_done()`` after each page and ``end_scan()`` at the end; ``cursor()`` at any of those
    points is safe to commit once everything accepted before it is delivered.

    Memory is bounded: ``seen`` holds at most ``max_seen`` identities plus those of its newest
    time (up to ``max_seen_newest``: forgetting them while a page may go on at that time would
    lose the rest of a burst), and the occurrence counts of a scan only the times at or above
    the floor.
    """

    lookback_ms: int
    max_seen: int = MAX_SEEN
    max_seen_newest: int = MAX_SEEN_NEWEST
    floor: int = 0
    seen: dict[int, set[str]] = field(default_factory=dict)
    _occurrences: dict[tuple[int, str], int] = field(default_factory=dict)
    _order: deque[tuple[int, str]] = field(default_factory=deque)  # _occurrences' keys, first seen first
    _high: int | None = None

    @classmethod
    def from_cursor(
        cls, cursor: str | None, lookback_ms: int, max_seen: int = MAX_SEEN, max_seen_newest: int = MAX_SEEN_NEWEST
    ) -> EventTracker:
        tracker = cls(lookback_ms=lookback_ms, max_seen=max_seen, max_seen_newest=max_seen_newest)
        if cursor is None:
            return tracker
        data = CODEC.loads(cursor)
        try:
            tracker.floor = int(data["floor"])
            tracker.seen = {int(t): set(ids) for t, ids in data["seen"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CODEC.fail(type(err).__name__) from None
        return tracker

    def cursor(self) -> str:
        seen = {str(t): sorted(ids) for t, ids in sorted(self.seen.items())}
        return CODEC.dumps({"floor": self.floor, "seen": seen})

    @property
    def seen_count(self) -> int:
        return sum(len(ids) for ids in self.seen.values())

    @property
    def counted(self) -> int:
        """Occurrence counts the current scan holds (bounded like ``seen``)."""
        return len(self._occurrences)

    def begin_scan(self) -> None:
        self._occurrences.clear()
        self._order.clear()
        self._high = None

    def accept(self, event: Event) -> str | None:
        """The event's identity if it is new (now marked seen), None if already read."""
        key = (event.time_ms, event.digest())
        occurrence = self._occurrences.get(key, 0)
        self._occurrences[key] = occurrence + 1
        if not occurrence:
            self._order.append(key)
        if self._high is None or event.time_ms > self._high:
            self._high = event.time_ms
        if event.time_ms < self.floor:
            return None
        identity = f"{key[1]}:{occurrence}"
        ids = self.seen.setdefault(event.time_ms, set())
        if identity in ids:
            return None
        ids.add(identity)
        return f"{event.time_ms}:{identity}"

    def page_done(self, last_time_ms: int | None, ascending: bool) -> None:
        """Raise the floor behind a page of an ascending scan (what follows is newer)."""
        if ascending and last_time_ms is not None:
            self._raise_floor(last_time_ms - self.lookback_ms)
        self._bound()

    def end_scan(self) -> None:
        if self._high is not None:
            self._raise_floor(self._high - self.lookback_ms)
        self._bound()

    def _raise_floor(self, floor: int) -> None:
        if floor <= self.floor:
            return
        self.floor = floor
        for t in [t for t in self.seen if t < floor]:
            del self.seen[t]
        order, occurrences = self._order, self._occurrences
        while order and order[0][0] < floor:  # an ascending scan counted them first; below the floor they are read
            del occurrences[order.popleft()]

    def _bound(self) -> None:
        """Forget the oldest times beyond ``max_seen`` ids (events at them count as read).

        The newest time is kept unless it alone holds more than ``max_seen_newest``: a page may
        go on at it, and a burst at one time still comes out whole.
        """
        count = self.seen_count
        if count <= self.max_seen:
            return
        times = sorted(self.seen)
        newest = times[-1]
        if len(self.seen[newest]) <= self.max_seen_newest:
            times.pop()
        forget = None
        for t in times:
            if count <= self.max_seen:
                break
            count -= len(self.seen[t])
            forget = t
        if forget is not None:
            self._raise_floor(forget + 1)


__all__ = ["MAX_SEEN", "EventTracker"]
