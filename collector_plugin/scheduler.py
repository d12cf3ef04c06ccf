"""Polling: every target on its source's interval, with idle backoff and failure isolation.

Each target runs in its own task. A poll that fails is logged and counted, and the target backs
off; the others go on. After a failed poll the reader is thrown away and a fresh one opened at the
last cursor it handed to the pipeline, so a half-finished poll can never leave a reader whose
memory disagrees with what was delivered. Targets a source no longer lists (or lists as ended) are
polled once more with ``draining=True`` and dropped, so memory stays bounded as jobs come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from collector_plugin.backoff import Backoff
from collector_plugin.records import Span
from collector_plugin.source import Reader, Source, SourceConfig, Target
from collector_plugin.telemetry import Metrics

log = logging.getLogger("collector_plugin.scheduler")

DEFAULT_REFRESH_INTERVAL = 60.0
JITTER_PER_TARGET = 0.01


class SpanSink(Protocol):
    async def put(self, span: Span) -> None: ...


class CursorLookup(Protocol):
    def get(self, key: str) -> str | None: ...


@dataclass
class _TargetState:
    target: Any
    task: asyncio.Task[None] | None = None
    cursor: str | None = None
    draining: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class SourceRuntime:
    """A configured source instance and its settings."""

    name: str
    source: Source
    config: SourceConfig

    @property
    def refresh_interval(self) -> float:
        discovery = getattr(self.config, "discovery", None)
        if discovery is not None and getattr(discovery, "enabled", False):
            return float(discovery.interval)
        return DEFAULT_REFRESH_INTERVAL


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
    ) -> None:
        self.sources = sources
        self.sink = sink
        self.cursors = cursors
        self.metrics = metrics
        self.jitter = jitter
        self._targets: dict[str, dict[str, _TargetState]] = {s.name: {} for s in sources}
        self._finished: dict[str, set[str]] = {s.name: set() for s in sources}
        self._stop = asyncio.Event()
        self.polls_completed = 0

    @property
    def active_targets(self) -> Mapping[str, int]:
        return {name: len(states) for name, states in self._targets.items()}

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

    async def _refresh_loop(self, rt: SourceRuntime) -> None:
        while not self._stop.is_set():
            try:
                targets = await rt.source.targets()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.target_errors.labels(rt.name, type(exc).__name__).inc()
                log.warning("listing targets failed", extra={"source": rt.name, "error": str(exc)})
            else:
                self._apply_targets(rt, targets)
            await _sleep_or_stop(self._stop, rt.refresh_interval)

    def _apply_targets(self, rt: SourceRuntime, targets: Any) -> None:
        states = self._targets[rt.name]
        finished = self._finished[rt.name]
        listed: dict[str, Target] = {t.key: t for t in targets}
        self.metrics.targets_discovered.labels(rt.name).set(len(listed))
        for key, target in listed.items():
            if key in states:
                states[key].target = target
                if not target.active and not states[key].draining:
                    states[key].draining = True
                    states[key].wake.set()
                continue
            if not target.active and key in finished:
                continue  # drained before and still ended: nothing new can come
            finished.discard(key)
            state = _TargetState(target=target, cursor=self.cursors.get(key), draining=not target.active)
            states[key] = state
            state.task = asyncio.create_task(self._run_target(rt, key, state), name=f"poll:{key}")
        for key, state in states.items():
            if key not in listed and not state.draining:
                state.draining = True
                state.wake.set()
        self.metrics.targets_active.labels(rt.name).set(len(states))

    async def _run_target(self, rt: SourceRuntime, key: str, state: _TargetState) -> None:
        base = max(0.01, float(rt.config.poll_interval))
        ceiling = max(base, float(rt.config.max_poll_interval))
        interval = base
        failures = 0
        if self.jitter and not state.draining:
            # Spread first polls over up to 10 ms per target (at most the interval, at most 5 s):
            # a thousand targets do not poll in one wave, a handful start at once.
            spread = min(base, 5.0, JITTER_PER_TARGET * len(self._targets[rt.name]))
            await _sleep_or_stop(self._stop, random.uniform(0, spread), state.wake)
        reader: Reader | None = None
        loop = asyncio.get_running_loop()
        try:
            while not self._stop.is_set():
                draining = state.draining
                if reader is None:
                    reader = rt.source.open(state.target, state.cursor)
                produced = False
                started = loop.time()
                try:
                    async for span in reader.poll(draining=draining):
                        await self.sink.put(span)
                        if span.cursor is not None:
                            state.cursor = span.cursor
                        produced = produced or bool(span.records)
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    reader = None  # reopen at the last cursor handed to the pipeline
                    self.metrics.target_errors.labels(rt.name, type(exc).__name__).inc()
                    log.warning(
                        "poll failed; backing off",
                        extra={"source": rt.name, "target": key, "error": str(exc), "failures": failures},
                    )
                    interval = Backoff(initial=2 * base, maximum=ceiling).delay(failures)
                    if draining and failures >= 3:
                        break
                    await _sleep_or_stop(self._stop, interval, state.wake)
                    continue
                self.polls_completed += 1
                if getattr(reader, "behind", False):
                    interval = base
                    continue  # it stopped early with more to read (draining too): no pause
                if draining:
                    break
                interval = base if produced else min(ceiling, interval * 1.5)
                # A fixed rate: the poll's own duration counts toward the interval.
                await _sleep_or_stop(self._stop, max(0.0, interval - (loop.time() - started)), state.wake)
                state.wake.clear()
        finally:
            if not self._stop.is_set() or state.draining:
                states = self._targets[rt.name]
                if states.get(key) is state and state.draining:
                    del states[key]
                    self._finished[rt.name].add(key)
                    self.metrics.targets_active.labels(rt.name).set(len(states))


async def _sleep_or_stop(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
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
