"""Which events of a scan are new, and the bounded cursor state (pure: no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

from collector_plugin.api import CursorCodec
from collector_plugin.sources.modelarts.events.model import Event
from collector_plugin.sources.modelarts.records import EVENTS_SOURCE

MAX_SEEN = 2000  # identities kept in a cursor (~40 KB of JSON at most)
CODEC = CursorCodec(EVENTS_SOURCE, version=1)


@dataclass
class EventTracker:
    """Decides which events of a scan are new and keeps the bounded cursor state.

    Pure (no I/O): a scan is ``begin_scan()``, ``accept()`` for each event in server order,
    ``page_done()`` after each page and ``end_scan()`` at the end; ``cursor()`` at any of those
    points is safe to commit once everything accepted before it is delivered.
    """

    lookback_ms: int
    max_seen: int = MAX_SEEN
    floor: int = 0
    seen: dict[int, set[str]] = field(default_factory=dict)
    _occurrences: dict[tuple[int, str], int] = field(default_factory=dict)
    _high: int | None = None

    @classmethod
    def from_cursor(cls, cursor: str | None, lookback_ms: int, max_seen: int = MAX_SEEN) -> EventTracker:
        tracker = cls(lookback_ms=lookback_ms, max_seen=max_seen)
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

    def begin_scan(self) -> None:
        self._occurrences.clear()
        self._high = None

    def accept(self, event: Event) -> str | None:
        """The event's identity if it is new (now marked seen), None if already read."""
        key = (event.time_ms, event.digest())
        occurrence = self._occurrences.get(key, 0)
        self._occurrences[key] = occurrence + 1
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

    def _bound(self) -> None:
        """Forget the oldest timestamps beyond ``max_seen`` ids; events at them count as read."""
        count = self.seen_count
        if count <= self.max_seen:
            return
        for t in sorted(self.seen):
            if count <= self.max_seen:
                break
            count -= len(self.seen.pop(t))
            self.floor = max(self.floor, t + 1)


__all__ = ["MAX_SEEN", "EventTracker"]
