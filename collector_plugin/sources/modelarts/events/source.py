"""The ``training_job_events`` plugin: one reader per job, over the pager and the tracker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from collector_plugin.api import (
    ApiError,
    Duration,
    Reader,
    ReaderStatus,
    Record,
    Source,
    SourceConfig,
    SourceContext,
    Span,
    Target,
    hookimpl,
)
from collector_plugin.sources.modelarts.client import (
    SERVICE_TRAINING,
    ModelArtsClient,
    StreamsConfig,
    modelarts_client,
    stream_resource,
)
from collector_plugin.sources.modelarts.discovery import Discoverable, DiscoveryConfig, get_job, search_jobs
from collector_plugin.sources.modelarts.events.model import Event
from collector_plugin.sources.modelarts.events.pager import EventPager, OffsetMode, ascending
from collector_plugin.sources.modelarts.events.tracker import EventTracker
from collector_plugin.sources.modelarts.records import EVENTS_SOURCE, event_job_attributes, event_record

SOURCE_NAME = EVENTS_SOURCE


class EventJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    name: str | None = None


class EventsConfig(Discoverable, StreamsConfig):
    poll_interval: Duration = 10.0
    start_at: Literal["beginning", "end"] = "beginning"
    jobs: list[EventJobConfig] = Field(default_factory=list)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    page_size: int = Field(default=100, ge=1, le=100)
    lookback: Duration = Field(default=300.0, ge=0, description="Seconds re-scanned for events that appear late.")


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

    def __init__(
        self,
        target: JobTarget,
        config: EventsConfig,
        context: SourceContext,
        client: ModelArtsClient,
        offsets: OffsetMode,
        cursor: str | None,
    ) -> None:
        self.key = target.key
        self.status = ReaderStatus()
        self._context = context
        self._client = client
        self._target = target
        self._tracker = EventTracker.from_cursor(cursor, lookback_ms=int(config.lookback * 1000))
        self._emit = cursor is not None or config.start_at == "beginning"
        self._shared = event_job_attributes(target.job_id, target.job_name)
        self._resource = stream_resource(context, config, SERVICE_TRAINING, f"{target.job_id}/events")
        self._last_cursor = cursor
        self._pager = EventPager(client, target.job_id, config.page_size, offsets)
        self._times = context.journal.open(target.key, self._tracker.floor)

    async def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
        """Scan the window once (draining changes nothing: every poll reads to the end).

        An unchanged window is one request (see :mod:`.pager`)."""
        ctx = self._context
        tracker = self._tracker
        tracker.begin_scan()
        async for page in self._pager.pages(tracker.floor, ctx.clock_ns() // 1_000_000):
            events, more = page.events, page.more
            observed = ctx.clock_ns()
            records: list[Record] = []
            nbytes = 0
            new: list[tuple[Event, str]] = []
            for event in events:
                identity = tracker.accept(event)
                nbytes += len(event.message)
                if identity is not None and self._emit:
                    new.append((event, identity))
            if new:  # stamped by event time before the records go out, so a replay observes them alike
                self._times.stamp(min(e.time_ms for e, _ in new), max(e.time_ms for e, _ in new) + 1, observed)
                records = [self._record(e, identity, self._times.at(e.time_ms, observed)) for e, identity in new]
            last = events[-1].time_ms if events else None
            tracker.page_done(last, ascending(events))
            lag = (observed // 1_000_000 - last) / 1000 if more and last is not None else 0.0
            self.status.lag_seconds = max(0.0, lag)
            if records:
                yield self._span(records, nbytes)
        tracker.end_scan()
        self._emit = True
        if tracker.cursor() != self._last_cursor:
            yield self._span([], 0)

    def _record(self, event: Event, identity: str, observed_ns: int) -> Record:
        return event_record(
            project_id=self._client.project_id,
            shared=self._shared,
            resource=self._resource,
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
        return Span(target=self.key, records=records, cursor=cursor, nbytes=nbytes)


class EventsSource:
    name: ClassVar[str] = SOURCE_NAME
    description: ClassVar[str] = "Training job events (v2 events API)"
    config_model: ClassVar[type[SourceConfig]] = EventsConfig

    def __init__(self, config: EventsConfig, context: SourceContext) -> None:
        self.config = config
        self.context = context
        self.client = modelarts_client(context)
        self.offsets = OffsetMode()
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
            for info in await search_jobs(self.client, self.config.discovery):
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
        return result

    async def _configured(self, job: EventJobConfig) -> JobTarget:
        try:
            info = await get_job(self.client, job.id)
        except ApiError as err:
            if err.status == 404:
                return JobTarget(job.id, job.name, active=False)
            self.context.logger.warning("%s: cannot read job %s details: %s", SOURCE_NAME, job.id, err)
            return JobTarget(job.id, job.name)
        return JobTarget(job.id, job.name or info.name or None, active=not info.ended)

    def open(self, target: Any, cursor: str | None) -> Reader:
        if not isinstance(target, JobTarget):
            raise TypeError(f"{SOURCE_NAME} cannot read {type(target).__name__}")
        return EventsReader(target, self.config, self.context, self.client, self.offsets, cursor)


@hookimpl
def register_sources(register: Callable[[type[Source]], None]) -> None:
    register(EventsSource)


__all__ = ["EventsConfig", "EventsReader", "EventsSource", "JobTarget"]
