"""Polling: every target on its source's interval, and every duty all sources share.

Each target runs in its own task. The scheduler owns what no source should write itself: one
error policy for opening and polling (log, count, back off and retry; a failed poll throws the
reader away and opens a fresh one at the last cursor it handed to the pipeline, so a half-finished
poll never leaves a reader whose memory disagrees with what was delivered), the ``on_bad_cursor``
policy for a committed cursor the source cannot read, counting records and bytes per source and
target, lag gauges from :class:`~collector_plugin.source.ReaderStatus`, and the discovered and
active target counts. Targets a source no longer lists (or lists as ended) are polled once more
with ``draining=True`` and dropped, so memory stays bounded as jobs come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from collector_plugin.backoff import Backoff
from collector_plugin.budget import CALL, CallTag, Priority, is_throttle
from collector_plugin.errors import ApiError
from collector_plugin.records import Span
from collector_plugin.slots import MAX_POLLS, PollSlots
from collector_plugin.source import BadCursor, Reader, Source, SourceConfig, Target, target_revision
from collector_plugin.telemetry import Metrics

log = logging.getLogger("collector_plugin.scheduler")

JITTER_PER_TARGET = 0.01


class SpanSink(Protocol):
    async def put(self, span: Span) -> None: ...


class CursorLookup(Protocol):
    def get(self, key: str) -> str | None: ...


class Ownership(Protocol):
    """Which targets this replica may read (``collector_plugin.replicas``); absent: all of them."""

    def listed(self, source: str, keys: Collection[str]) -> None:
        """The keys ``source`` lists now (the group balances them)."""
        ...

    def owns(self, key: str) -> bool:
        """Whether this replica holds ``key``'s lease now: checked before each poll and each span."""
        ...

    async def list_targets(self, name: str, source: Source, refresh: float) -> Sequence[Target]:
        """``source``'s targets: listed here, or read from the group's listing (discovery once)."""
        ...


class LeaseLost(Exception):
    """The target's lease ran out or moved on mid-poll: stop; its new owner reads on from the commit."""


@dataclass
class TargetState:
    """What the scheduler knows of one target (also what a status page shows)."""

    target: Any
    task: asyncio.Task[None] | None = None
    cursor: str | None = None
    draining: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    records: int = 0
    bytes: int = 0
    polls: int = 0
    failures: int = 0
    failed: str = ""  # why the target stopped for good (e.g. an unreadable cursor), "" while it runs
    last_error: str = ""
    last_poll_at: float | None = None  # loop time the last poll ended
    news: bool = False  # the last poll produced, or the reader said more is coming soon

    def call_tag(self, key: str, now: float) -> CallTag:
        """How this target's next API calls queue for budget: new first, then likely news, then idle."""
        if self.last_poll_at is None:
            return CallTag(Priority.NEW, key)
        if self.news or self.draining:
            return CallTag(Priority.NEWS, key)
        return CallTag(Priority.IDLE, key, since_last_poll=now - self.last_poll_at)


@dataclass
class SourceRuntime:
    """A configured source instance and its settings."""

    name: str
    source: Source
    config: SourceConfig

    @property
    def refresh_interval(self) -> float:
        return float(self.config.refresh_interval)


class Scheduler:
    """Runs the sources until ``stop`` is set; never exports and never commits."""

    def __init__(
        self,
        sources: list[SourceRuntime],
        sink: SpanSink,
        cursors: CursorLookup,
        metrics: Metrics,
        *,
        jitter: bool = True,
        ownership: Ownership | None = None,
        max_polls: int = MAX_POLLS,
    ) -> None:
        self.sources = sources
        self.ownership = ownership
        self.sink = sink
        self.cursors = cursors
        self.metrics = metrics
        self.jitter = jitter
        self._targets: dict[str, dict[str, TargetState]] = {s.name: {} for s in sources}
        self._finished: dict[str, set[str]] = {s.name: set() for s in sources}
        self._listed: dict[str, dict[str, Target]] = {s.name: {} for s in sources}
        self._stop = asyncio.Event()
        self._slots = PollSlots(max_polls)  # polls reading at once: what waits for the pipeline is bounded
        self.polls_completed = 0
        self._first_data: dict[str, int] = {s.name: 0 for s in sources}  # targets with first records, not yet logged

    @property
    def active_targets(self) -> Mapping[str, int]:
        return {name: sum(1 for st in states.values() if not st.failed) for name, states in self._targets.items()}

    def targets(self, source: str) -> Mapping[str, TargetState]:
        """The targets of ``source`` the scheduler holds now, by key."""
        return self._targets[source]

    def _count_active(self, source: str) -> None:
        self.metrics.targets_active.labels(source).set(self.active_targets[source])

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set, then cancel every target task."""
        self._stop = stop
        refreshers = [asyncio.create_task(self._refresh_loop(rt), name=f"refresh:{rt.name}") for rt in self.sources]
        try:
            await stop.wait()
        finally:
            for task in refreshers:
                task.cancel()
            tasks = [st.task for states in self._targets.values() for st in states.values() if st.task]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*refreshers, *tasks, return_exceptions=True)
            for rt in self.sources:
                self._log_first_data(rt.name)

    async def _refresh_loop(self, rt: SourceRuntime) -> None:
        CALL.set(CallTag(Priority.NEWS, f"{rt.name}/targets"))  # discovery finds the targets: ahead of idle polls
        while not self._stop.is_set():
            self._log_first_data(rt.name)
            try:
                if self.ownership is not None:
                    targets = await self.ownership.list_targets(rt.name, rt.source, rt.refresh_interval)
                else:
                    targets = await rt.source.targets()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.target_errors.labels(rt.name, type(exc).__name__).inc()
                log.warning("listing targets failed", extra={"source": rt.name, "error": str(exc)})
            else:
                self._apply_targets(rt, targets)
            await sleep_or_stop(self._stop, rt.refresh_interval)

    def _apply_targets(self, rt: SourceRuntime, targets: Any) -> None:
        states = self._targets[rt.name]
        listed: dict[str, Target] = {t.key: t for t in targets}
        self._listed[rt.name] = listed
        self.metrics.targets_discovered.labels(rt.name).set(len(listed))
        added: list[str] = []
        for key, target in listed.items():
            if key in states:
                state, revision = states[key], target_revision(target)
                changed = revision is not None and revision != target_revision(state.target)
                state.target = target
                if not target.active and not state.draining:
                    state.draining = True
                    state.wake.set()
                elif changed:
                    state.news = True  # the listing shows a change: poll it now, as likely news
                    state.wake.set()
                continue
            if self.ownership is not None:
                continue  # started by adopt() once this replica holds its lease
            if self._start(rt, key, target, self.cursors.get(key)):
                added.append(key)
        dropped = []
        for key, state in list(states.items()):
            if key not in listed and not state.draining:
                dropped.append(key)
                if state.failed:
                    del states[key]  # a failed target no longer listed: nothing left to show
                    continue
                state.draining = True
                state.wake.set()
        self._count_active(rt.name)
        self._log_targets(rt.name, len(listed), added, dropped)
        if self.ownership is not None:
            self.ownership.listed(rt.name, listed.keys())

    def _start(self, rt: SourceRuntime, key: str, target: Target, cursor: str | None) -> bool:
        """Start polling ``target`` from ``cursor``; False when it was drained before and is still ended."""
        finished = self._finished[rt.name]
        if not target.active and key in finished:
            return False  # drained before and still ended: nothing new can come
        finished.discard(key)
        state = TargetState(target=target, cursor=cursor, draining=not target.active)
        self._targets[rt.name][key] = state
        state.task = asyncio.create_task(self._run_target(rt, key, state), name=f"poll:{key}")
        return True

    # -- leases (several replicas): the coordinator hands targets in and takes them back

    def running(self) -> set[str]:
        """Keys with a poll task now (any source)."""
        return {key for states in self._targets.values() for key in states}

    def listed_keys(self) -> set[str]:
        """Every key the sources list now (any source, whoever reads it)."""
        return {key for listed in self._listed.values() for key in listed}

    def adopt(self, cursors: Mapping[str, str | None]) -> list[str]:
        """Start the listed targets of ``cursors`` (this replica now holds their leases) at the
        committed cursor given; returns the keys started."""
        started: list[str] = []
        for rt in self.sources:
            listed, states = self._listed[rt.name], self._targets[rt.name]
            for key in cursors.keys() & listed.keys():
                if key not in states and self._start(rt, key, listed[key], cursors[key]):
                    started.append(key)
            self._count_active(rt.name)
        return started

    async def relinquish(self, keys: Iterable[str]) -> None:
        """Stop polling ``keys`` now (their leases go, or went, to another replica) and forget them."""
        wanted = set(keys)
        stopping: list[asyncio.Task[None]] = []
        for rt in self.sources:
            states = self._targets[rt.name]
            for key in wanted & states.keys():
                state = states.pop(key)
                self._lag(rt.name, key, None, None, remove=True)
                if state.task is not None and state.task is not asyncio.current_task():
                    state.task.cancel()
                    stopping.append(state.task)
            self._count_active(rt.name)
        await asyncio.gather(*stopping, return_exceptions=True)

    def _log_targets(self, source: str, listed: int, added: list[str], dropped: list[str]) -> None:
        """A count per refresh at info (1,000 new jobs are one line); each target at debug."""
        for key in added:
            log.debug("target added", extra={"source": source, "target": key})
        for key in dropped:
            log.debug("target no longer listed; draining it", extra={"source": source, "target": key})
        if added or dropped:
            log.info(
                "%s: %d targets found, %d dropped (%d listed, %d active)",
                source,
                len(added),
                len(dropped),
                listed,
                self.active_targets[source],
                extra={"source": source, "added": len(added), "dropped": len(dropped), "listed": listed},
            )

    def _log_first_data(self, source: str) -> None:
        """How many targets sent their first records since the last line (one line per source)."""
        count, self._first_data[source] = self._first_data[source], 0
        if count:
            with_data = sum(1 for st in self._targets[source].values() if st.records)
            log.info(
                "%s: first records from %d more targets (%d of %d have sent records)",
                source,
                count,
                with_data,
                len(self._targets[source]),
                extra={"source": source, "targets": count},
            )

    async def _run_target(self, rt: SourceRuntime, key: str, state: TargetState) -> None:
        base = max(0.01, float(rt.config.poll_interval))
        ceiling = max(base, float(rt.config.max_poll_interval))
        interval = base
        if self.jitter and not state.draining:
            # Spread first polls over up to 10 ms per target, at most a second (or the interval):
            # every target is read within about a second of start when the budget allows, and
            # the budget, not the start order, decides who goes first when it does not.
            spread = min(base, 1.0, JITTER_PER_TARGET * len(self._targets[rt.name]))
            await sleep_or_stop(self._stop, random.uniform(0, spread), state.wake)
        reader: Reader | None = None
        loop = asyncio.get_running_loop()
        try:
            while not self._stop.is_set():
                draining = state.draining
                produced = False
                started = loop.time()
                try:
                    self._check_lease(key)
                    if reader is None:
                        reader = self._open(rt, key, state)
                        if reader is None:
                            return  # failed for good: stays listed, visible and counted as failed
                    tag = state.call_tag(key, started)
                    CALL.set(tag)
                    async with self._slots.slot(tag):
                        async for span in reader.poll(draining=draining):
                            self._check_lease(key)  # never send what was read after the lease ran out
                            await self.sink.put(span)
                            if span.cursor is not None:
                                state.cursor = span.cursor
                            self._count(rt.name, state, span)
                            self._lag(rt.name, key, reader.status.lag_bytes, reader.status.lag_seconds)
                            produced = produced or bool(span.records)
                    state.failures = 0
                except asyncio.CancelledError:
                    raise
                except LeaseLost:
                    self._lease_lost(rt.name, key, state)
                    return
                except Exception as exc:
                    reader = None  # reopen at the last cursor handed to the pipeline
                    state.last_poll_at = loop.time()
                    if _throttled(exc):  # the API's flow control: wait our turn, it is not the target's fault
                        state.last_error = f"throttled: {exc}"
                        self.metrics.target_errors.labels(rt.name, "throttled").inc()
                        await sleep_or_stop(self._stop, base, state.wake)
                        continue
                    self._failed_poll(rt.name, key, state, exc)
                    if draining and state.failures >= 3:
                        break
                    interval = Backoff(initial=2 * base, maximum=ceiling).delay(state.failures)
                    await sleep_or_stop(self._stop, interval, state.wake)
                    continue
                state.polls += 1
                self.polls_completed += 1
                status = reader.status
                if log.isEnabledFor(logging.DEBUG):
                    _log_poll(rt.name, key, state, status, loop.time() - started, draining)
                state.last_poll_at = loop.time()
                state.news = produced or status.transitional or status.behind
                self._lag(rt.name, key, status.lag_bytes, status.lag_seconds)
                if status.behind:
                    interval = base
                    continue  # it stopped early with more to read (draining too): no pause
                if draining:
                    break
                interval = base if produced or status.transitional else min(ceiling, interval * 1.5)
                # A fixed rate: the poll's own duration counts toward the interval.
                await sleep_or_stop(self._stop, max(0.0, interval - (loop.time() - started)), state.wake)
                state.wake.clear()
        finally:
            if not self._stop.is_set() or state.draining:
                states = self._targets[rt.name]
                if states.get(key) is state and state.draining:
                    del states[key]
                    self._finished[rt.name].add(key)
                    self._lag(rt.name, key, None, None, remove=True)
                self._count_active(rt.name)

    def _check_lease(self, key: str) -> None:
        if self.ownership is not None and not self.ownership.owns(key):
            raise LeaseLost(key)

    def _lease_lost(self, source: str, key: str, state: TargetState) -> None:
        """Forget a target whose lease is no longer ours; what was read and not sent is the new owner's."""
        states = self._targets[source]
        if states.get(key) is state:
            del states[key]
            self._lag(source, key, None, None, remove=True)
        self.metrics.target_errors.labels(source, "LeaseLost").inc()
        log.info(
            "lease of target no longer held; stopped reading it (its owner reads on from the committed cursor)",
            extra={"source": source, "target": key},
        )

    def _open(self, rt: SourceRuntime, key: str, state: TargetState) -> Reader | None:
        """A reader at the target's cursor; None when the cursor is unreadable and policy says fail."""
        try:
            return rt.source.open(state.target, state.cursor)
        except BadCursor as exc:
            self.metrics.target_errors.labels(rt.name, "BadCursor").inc()
            if rt.config.on_bad_cursor == "restart":
                log.warning(
                    "unreadable cursor; reading the target again from start_at as on_bad_cursor says",
                    extra={"source": rt.name, "target": key, "error": str(exc), "start_at": rt.config.start_at},
                )
                state.cursor = None
                return rt.source.open(state.target, None)
            state.failed = state.last_error = str(exc)
            log.error(
                "unreadable cursor; target stopped (set on_bad_cursor: restart to read it again from start_at)",
                extra={"source": rt.name, "target": key, "error": str(exc)},
            )
            self._count_active(rt.name)
            return None

    def _failed_poll(self, source: str, key: str, state: TargetState, exc: Exception) -> None:
        state.failures += 1
        state.last_error = f"{type(exc).__name__}: {exc}"
        self.metrics.target_errors.labels(source, type(exc).__name__).inc()
        log.warning(
            "poll failed; backing off",
            extra={"source": source, "target": key, "error": str(exc), "failures": state.failures},
        )

    def _count(self, source: str, state: TargetState, span: Span) -> None:
        if span.records:
            if not state.records:
                self._first_data[source] += 1
                log.debug("first records from target", extra={"source": source, "target": span.target})
            state.records += len(span.records)
            self.metrics.records_read.labels(source).inc(len(span.records))
        if span.nbytes:
            state.bytes += span.nbytes
            self.metrics.bytes_read.labels(source).inc(span.nbytes)

    def _lag(
        self, source: str, key: str, lag_bytes: int | None, lag_seconds: float | None, *, remove: bool = False
    ) -> None:
        for gauge, value in (
            (self.metrics.target_lag_bytes, lag_bytes),
            (self.metrics.target_lag_seconds, lag_seconds),
        ):
            if remove:
                with contextlib.suppress(KeyError):
                    gauge.remove(source, key)
            elif value is not None:
                gauge.labels(source, key).set(value)


def _throttled(exc: Exception) -> bool:
    return isinstance(exc, ApiError) and is_throttle(exc.status, exc.error_code)


def _log_poll(source: str, key: str, state: TargetState, status: Any, seconds: float, draining: bool) -> None:
    log.debug(
        "polled",
        extra={
            "source": source,
            "target": key,
            "seconds": round(seconds, 3),
            "records_total": state.records,
            "bytes_total": state.bytes,
            "behind": status.behind,
            "lag_bytes": status.lag_bytes,
            "draining": draining,
        },
    )


async def sleep_or_stop(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    """Sleep ``seconds`` unless ``stop`` (or ``wake``) is set first."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
