"""``training_job_events``: training job events with level and source, exactly once.

The events API has no id and no stable cursor: events share timestamps, may appear late with an
older time than ones already read, and ``offset`` is an item index on some server versions and a
page index on others. So each poll re-reads a time window ``[floor, now + 1 day]`` in ascending
order, every page of it, and recognises events already read by their identity: ``(time, level,
source, message, occurrence among identical ones at that time)``. The cursor holds ``floor`` (the
high-water time minus ``lookback``: older events count as read) and the identities seen at or
after it, bounded in number. Late events within ``lookback`` are caught; nothing repeats.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import pairwise
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from collector_plugin.discovery import DiscoveryConfig, get_job, search_jobs
from collector_plugin.durations import Duration
from collector_plugin.errors import ApiError, CheckpointError, ResponseFormatError
from collector_plugin.hookspecs import hookimpl
from collector_plugin.mapping import event_job_attributes, event_record, normalise_event_source
from collector_plugin.records import Record, Span
from collector_plugin.source import Reader, Source, SourceConfig, SourceContext, Target

SOURCE_NAME = "training_job_events"
EP_EVENTS = "/v2/{project_id}/training-jobs/{training_job_id}/events"
END_MARGIN_MS = 86_400_000  # end_time = now + 1 day: a server clock ahead of ours loses nothing
MAX_SEEN = 2000  # identities kept in a cursor (~40 KB of JSON at most)
CURSOR_VERSION = 1
MAX_TIME_MS = (2**64 - 1) // 1_000_000


class EventJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    name: str | None = None


class EventsConfig(SourceConfig):
    poll_interval: Duration = 10.0
    start_at: Literal["beginning", "end"] = "beginning"
    jobs: list[EventJobConfig] = Field(default_factory=list)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    page_size: int = Field(default=100, ge=1, le=100)
    lookback: Duration = Field(default=300.0, ge=0, description="Seconds re-scanned for events that appear late.")


# --- response model -------------------------------------------------------------------------


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")

    time: str | int | float
    level: str = ""
    message: str = ""
    source: str = ""


class _EventPage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    total: int | None = None
    events: list[_Event] | None = None


def parse_event_time(value: str | int | float) -> int:
    """Epoch milliseconds from epoch ms (number or digits) or ISO 8601 (``+08:00``, ``Z``, naive = UTC)."""
    if isinstance(value, (int, float)):
        return _in_range(value)
    text = value.strip()
    if text.lstrip("-").isdigit():
        return _in_range(int(text))
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"unrecognised event time {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return _in_range(math.floor(moment.timestamp() * 1000 + 0.5))


def _in_range(ms: float) -> int:
    """Reject times an OTLP timestamp (uint64 ns) cannot hold, NaN and infinities included."""
    if not 0 <= ms <= MAX_TIME_MS:
        raise ValueError(f"event time {ms!r} ms is out of range")
    return int(ms)


@dataclass(frozen=True, slots=True)
class Event:
    """One event as read, with its time in epoch ms and its source normalised."""

    time_ms: int
    level: str
    source: str
    message: str

    @classmethod
    def of(cls, raw: _Event) -> Event:
        try:
            time_ms = parse_event_time(raw.time)
        except ValueError as err:
            raise ResponseFormatError(EP_EVENTS, "events.time", str(err)) from None
        return cls(time_ms, raw.level, normalise_event_source(raw.source), raw.message)

    def digest(self) -> str:
        """What tells this event apart from others at the same time (occurrence index aside)."""
        text = f"{self.level.strip().lower()}\x1f{self.source}\x1f{self.message}"
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


# --- the pure part: which events are new, and the cursor -----------------------------------


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
        try:
            data = json.loads(cursor)
            tracker.floor = int(data["floor"])
            tracker.seen = {int(t): set(ids) for t, ids in data["seen"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{SOURCE_NAME}: unreadable cursor ({type(err).__name__})") from None
        return tracker

    def cursor(self) -> str:
        seen = {str(t): sorted(ids) for t, ids in sorted(self.seen.items())}
        return json.dumps({"v": CURSOR_VERSION, "floor": self.floor, "seen": seen}, separators=(",", ":"))

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


# --- offset mode ----------------------------------------------------------------------------

OffsetMode = Literal["item", "page"]


def _same(a: Sequence[Event], b: Sequence[Event]) -> bool:
    return len(a) == len(b) and all(x == y for x, y in zip(a, b, strict=True))


# --- targets, reader, source ----------------------------------------------------------------


@dataclass(frozen=True)
class JobTarget:
    job_id: str
    job_name: str | None = None
    active: bool = True

    @property
    def key(self) -> str:
        return f"{SOURCE_NAME}/{self.job_id}"


class EventsReader:
    """Reads one job's events; one span per page with new events, cursor after it."""

    def __init__(self, source: EventsSource, target: JobTarget, cursor: str | None) -> None:
        self.key = target.key
        self._source = source
        self._target = target
        cfg = source.config
        self._tracker = EventTracker.from_cursor(cursor, lookback_ms=int(cfg.lookback * 1000))
        self._emit = cursor is not None or cfg.start_at == "beginning"
        self._shared = event_job_attributes(target.job_id, target.job_name)
        self._last_cursor = cursor
        self._path = source.context.client.path(EP_EVENTS, training_job_id=target.job_id)

    async def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
        """Scan the window once (draining changes nothing: every poll reads to the end)."""
        ctx = self._source.context
        tracker = self._tracker
        tracker.begin_scan()
        async for events, more in self._pages():
            observed = ctx.clock_ns()
            records: list[Record] = []
            nbytes = 0
            for event in events:
                identity = tracker.accept(event)
                nbytes += len(event.message)
                if identity is not None and self._emit:
                    records.append(self._record(event, identity, observed))
            last = events[-1].time_ms if events else None
            tracker.page_done(last, _ascending(events))
            self._set_lag((observed // 1_000_000 - last) / 1000 if more and last is not None else 0.0)
            if records:
                yield self._span(records, nbytes)
        tracker.end_scan()
        self._emit = True
        if tracker.cursor() != self._last_cursor:
            yield self._span([], 0)

    def _record(self, event: Event, identity: str, observed_ns: int) -> Record:
        return event_record(
            project_id=self._source.context.project_id,
            shared=self._shared,
            job_id=self._target.job_id,
            time_ns=event.time_ms * 1_000_000,
            level=event.level,
            message=event.message,
            source=event.source,
            identity=identity,
            observed_ns=observed_ns,
        )

    def _span(self, records: list[Record], nbytes: int) -> Span:
        cursor = self._tracker.cursor()
        self._last_cursor = cursor
        metrics = self._source.context.metrics
        if metrics is not None and records:
            metrics.records_read.labels(SOURCE_NAME).inc(len(records))
        return Span(target=self.key, records=records, cursor=cursor, nbytes=nbytes)

    def _set_lag(self, seconds: float) -> None:
        metrics = self._source.context.metrics
        if metrics is not None:
            metrics.target_lag_seconds.labels(SOURCE_NAME, self.key).set(max(0.0, seconds))

    async def _fetch(self, offset: int, window: tuple[int, int] | None) -> tuple[list[Event], int | None]:
        params: dict[str, str | int] = {"offset": offset, "limit": self._source.config.page_size, "order": "asc"}
        if window is not None:
            params["start_time"], params["end_time"] = window
        client = self._source.context.client
        page = await client.get_model(self._path, _EventPage, endpoint=EP_EVENTS, params=params)
        return [Event.of(e) for e in page.events or []], page.total

    async def _pages(self) -> AsyncIterator[tuple[list[Event], bool]]:
        """Every page of the window, and whether more may follow it.

        The first page (offset 0) means the same in both offset modes; the mode is detected
        once per source when a second page is first needed (see :meth:`_detect_mode`).
        """
        limit = self._source.config.page_size
        floor = self._tracker.floor
        now_ms = self._source.context.clock_ns() // 1_000_000
        window = None if floor <= 0 else (floor, max(now_ms, floor) + END_MARGIN_MS)
        first, total = await self._fetch(0, window)
        full = len(first) >= limit
        yield first, full
        if not full:
            return
        mode = self._source.offset_mode
        index = 1
        if mode is None:
            mode, second = await self._detect_mode(first, total, window)
            self._source.offset_mode = mode
            if second is not None:
                full = len(second) >= limit
                yield second, full
                if not full:
                    return
                index = 2
        while True:
            events, total = await self._fetch(index * limit if mode == "item" else index, window)
            full = len(events) >= limit
            yield events, full
            if not full or (total is not None and index * limit > total + limit):
                return
            index += 1

    async def _detect_mode(
        self, first: list[Event], total: int | None, window: tuple[int, int] | None
    ) -> tuple[OffsetMode, list[Event] | None]:
        """Ask for ``offset=1``: an item index answers page 0 shifted by one, a page index page 1.

        When the answer is page 0 shifted by one it is an item index, unless the events are so
        alike (all at one timestamp) that page 1 could look the same; then ask for the page
        index just past ``total``, where a page index finds nothing and an item index finds
        events. Returns the mode and, in page mode, page 1 (already fetched).
        """
        limit = self._source.config.page_size
        if limit == 1:
            return "item", None
        probe, total2 = await self._fetch(1, window)
        if not _same(probe[: limit - 1], first[1:]):
            return "page", probe
        if first[1].time_ms != first[-1].time_ms:
            return "item", None
        total = total2 if total2 is not None else total
        if total is None or total <= limit:
            return "item", None
        past = math.ceil(total / limit)
        beyond, _ = await self._fetch(past + 1 if past + 1 < total else past, window)
        if beyond:
            return "item", None
        return "page", None


def _ascending(events: Sequence[Event]) -> bool:
    return all(a.time_ms <= b.time_ms for a, b in pairwise(events))


class EventsSource:
    name: ClassVar[str] = SOURCE_NAME
    description: ClassVar[str] = "Training job events (v2 events API)"
    config_model: ClassVar[type[SourceConfig]] = EventsConfig

    def __init__(self, config: EventsConfig, context: SourceContext) -> None:
        self.config = config
        self.context = context
        self.offset_mode: OffsetMode | None = None
        self._discovered: dict[str, JobTarget] = {}
        self._retired: set[str] = set()

    async def targets(self) -> Sequence[Target]:
        """Configured jobs and discovered ones; an ended job is returned once, inactive."""
        found: dict[str, JobTarget] = {}
        for job in self.config.jobs:
            target = await self._configured(job)
            found[target.key] = target
        if self.config.discovery.enabled:
            current = {}
            for info in await search_jobs(self.context.client, self.config.discovery):
                target = JobTarget(info.id, info.name or None, active=not info.ended)
                current[target.key] = target
            for key, gone in self._discovered.items():
                if key not in current:
                    current[key] = JobTarget(gone.job_id, gone.job_name, active=False)
            self._discovered = {k: t for k, t in current.items() if t.active}
            for key, target in current.items():
                found.setdefault(key, target)
        result = [t for t in found.values() if t.key not in self._retired]
        self._retired.update(t.key for t in result if not t.active)
        if self.context.metrics is not None:
            self.context.metrics.targets_discovered.labels(SOURCE_NAME).set(len(result))
        return result

    async def _configured(self, job: EventJobConfig) -> JobTarget:
        try:
            info = await get_job(self.context.client, job.id)
        except ApiError as err:
            if err.status == 404:
                return JobTarget(job.id, job.name, active=False)
            self.context.logger.warning("%s: cannot read job %s details: %s", SOURCE_NAME, job.id, err)
            return JobTarget(job.id, job.name)
        return JobTarget(job.id, job.name or info.name or None, active=not info.ended)

    def open(self, target: Any, cursor: str | None) -> Reader:
        if not isinstance(target, JobTarget):
            target = JobTarget(str(getattr(target, "job_id", target)))
        return EventsReader(self, target, cursor)


@hookimpl
def register_sources(register: Callable[[type[Source]], None]) -> None:
    register(EventsSource)


__all__ = ["EventTracker", "EventsConfig", "EventsReader", "EventsSource", "JobTarget", "parse_event_time"]
