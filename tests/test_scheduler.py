"""Scheduler: idle backoff, failure isolation with reopen at the last cursor, draining ended targets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from collector_plugin.budget import CALL, Priority
from collector_plugin.records import Record, Span
from collector_plugin.scheduler import Scheduler, SourceRuntime
from collector_plugin.source import ReaderStatus, SourceConfig
from collector_plugin.telemetry import Metrics


@dataclass
class FakeTarget:
    key: str
    active: bool = True


@dataclass
class FakeReader:
    key: str
    cursor: str | None
    behaviour: str
    log: list[tuple[str, str | None, bool]]
    n: int = 0
    status: ReaderStatus = field(default_factory=ReaderStatus)

    async def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
        self.log.append((self.key, self.cursor, draining))
        self.n += 1
        if self.behaviour == "fail" or (self.behaviour == "fail-after-one" and self.n > 1):
            yield Span(self.key, [_record(self.key, self.cursor)], cursor=f"{self.key}:{self.n}:{id(self)}")
            raise RuntimeError("API exploded")
        if self.behaviour == "active" or draining:
            self.cursor = f"{self.key}:{self.n}"
            yield Span(self.key, [_record(self.key, self.cursor)], cursor=self.cursor)


def _record(key: str, cursor: str | None) -> Record:
    return Record(body=f"{key}@{cursor}", uid=f"{key}{cursor}", observed_ns=0)


@dataclass
class FakeSource:
    name: ClassVar[str] = "fake"
    description: ClassVar[str] = "fake"
    config_model: ClassVar[type[SourceConfig]] = SourceConfig
    targets_now: list[FakeTarget] = field(default_factory=list)
    behaviours: dict[str, str] = field(default_factory=dict)
    log: list[tuple[str, str | None, bool]] = field(default_factory=list)
    opened: list[tuple[str, str | None]] = field(default_factory=list)

    async def targets(self) -> Sequence[FakeTarget]:
        return list(self.targets_now)

    def open(self, target: Any, cursor: str | None) -> FakeReader:
        self.opened.append((target.key, cursor))
        return FakeReader(target.key, cursor, self.behaviours.get(target.key, "idle"), self.log)


class Sink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    async def put(self, span: Span) -> None:
        self.spans.append(span)


def make(source: FakeSource, cursors: dict[str, str] | None = None, **cfg: Any) -> tuple[Scheduler, Sink]:
    config = SourceConfig(poll_interval=cfg.get("poll", 0.01), max_poll_interval=cfg.get("max_poll", 0.3))
    runtime = SourceRuntime("fake", source, config)  # type: ignore[arg-type]
    sink = Sink()
    return Scheduler([runtime], sink, cursors or {}, Metrics(), jitter=False), sink


async def run_for(scheduler: Scheduler, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_idle_targets_back_off_active_ones_do_not() -> None:
    source = FakeSource([FakeTarget("fake/active"), FakeTarget("fake/idle")], {"fake/active": "active"})
    scheduler, sink = make(source)
    await run_for(scheduler, 1.0)
    active = sum(1 for key, _, _ in source.log if key == "fake/active")
    idle = sum(1 for key, _, _ in source.log if key == "fake/idle")
    assert active > 3 * idle, (active, idle)
    assert all(span.target == "fake/active" for span in sink.spans)


async def test_failing_target_does_not_stop_others_and_reopens_at_last_cursor() -> None:
    source = FakeSource(
        [FakeTarget("fake/ok"), FakeTarget("fake/bad")], {"fake/ok": "active", "fake/bad": "fail-after-one"}
    )
    scheduler, sink = make(source, {"fake/bad": "committed-0"})
    await run_for(scheduler, 0.6)
    assert sum(1 for s in sink.spans if s.target == "fake/ok") > 5
    bad_opens = [cursor for key, cursor in source.opened if key == "fake/bad"]
    assert bad_opens[0] == "committed-0"  # first open resumes from the checkpoint
    assert len(bad_opens) >= 2
    bad_cursors = [s.cursor for s in sink.spans if s.target == "fake/bad"]
    # every reopen starts at the last cursor handed to the pipeline, never at an older one
    for reopened, previous in zip(bad_opens[1:], bad_cursors, strict=False):
        assert reopened == previous
    assert scheduler.metrics.target_errors.labels("fake", "RuntimeError")._value.get() >= 1


async def test_removed_target_is_drained_once_and_dropped() -> None:
    target = FakeTarget("fake/job")
    source = FakeSource([target])
    scheduler, sink = make(source)
    stop = asyncio.Event()
    runtime = scheduler.sources[0]
    task = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(0.1)
    target.active = False
    scheduler._apply_targets(runtime, await source.targets())
    await asyncio.sleep(0.2)
    drains = [entry for entry in source.log if entry[2]]
    assert len(drains) == 1
    assert scheduler.active_targets["fake"] == 0
    # listed again as ended: not reopened
    scheduler._apply_targets(runtime, await source.targets())
    await asyncio.sleep(0.1)
    assert len([entry for entry in source.log if entry[2]]) == 1
    assert [s.target for s in sink.spans] == ["fake/job"]  # the drain's final span
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_stop_cancels_a_poll_blocked_on_backpressure() -> None:
    class BlockedSink(Sink):
        async def put(self, span: Span) -> None:
            await asyncio.Event().wait()

    source = FakeSource([FakeTarget("fake/a")], {"fake/a": "active"})
    config = SourceConfig(poll_interval=0.01)
    scheduler = Scheduler([SourceRuntime("fake", source, config)], BlockedSink(), {}, Metrics(), jitter=False)  # type: ignore[arg-type]
    await run_for(scheduler, 0.2)  # returns although put() never does


async def test_a_reader_still_behind_is_polled_again_at_once() -> None:
    class BehindReader:
        key = "fake/behind"

        def __init__(self) -> None:
            self.polls = 0
            self.status = ReaderStatus()

        async def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
            self.polls += 1
            self.status.behind = self.polls < 4
            yield Span(self.key, [_record(self.key, str(self.polls))], cursor=str(self.polls))

    reader = BehindReader()

    class Src(FakeSource):
        def open(self, target: Any, cursor: str | None) -> Any:
            return reader

    scheduler, sink = make(Src([FakeTarget("fake/behind")]), poll=5.0, max_poll=5.0)
    await run_for(scheduler, 0.5)
    # three polls that stopped early are followed at once; the fourth waits for the 5 s interval
    assert reader.polls == 4
    assert [s.cursor for s in sink.spans] == ["1", "2", "3", "4"]


# ------------------------------------------------------------------------------- what it logs


async def wait_until(condition: Callable[[], bool], guard: float = 30.0) -> None:
    """Wait for ``condition``; ``guard`` only bounds a hang."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), guard)


def _messages(caplog: Any, level: int, logger: str = "collector_plugin.scheduler") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == level]


async def test_discovered_and_dropped_targets_are_one_info_line_per_refresh(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="collector_plugin.scheduler")
    source = FakeSource([FakeTarget(f"fake/t{i}") for i in range(1000)])
    scheduler, _ = make(source)
    scheduler._stop.set()  # target tasks end at once: only the bookkeeping runs
    runtime = scheduler.sources[0]
    scheduler._apply_targets(runtime, await source.targets())
    assert _messages(caplog, logging.INFO) == ["fake: 1000 targets found, 0 dropped (1000 listed, 1000 active)"]
    assert len([m for m in _messages(caplog, logging.DEBUG) if m == "target added"]) == 1000
    caplog.clear()
    scheduler._apply_targets(runtime, await source.targets())  # nothing changed: nothing said
    assert _messages(caplog, logging.INFO) == []
    source.targets_now = [*source.targets_now[:600], FakeTarget("fake/new")]
    scheduler._apply_targets(runtime, await source.targets())
    (line,) = _messages(caplog, logging.INFO)
    assert line.startswith("fake: 1 targets found, 400 dropped (601 listed")
    await asyncio.gather(*(st.task for st in scheduler.targets("fake").values() if st.task))


async def test_first_data_is_debug_per_target_and_an_info_count(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="collector_plugin.scheduler")
    keys = [f"fake/t{i}" for i in range(50)]
    source = FakeSource([FakeTarget(k) for k in keys], {k: "active" for k in keys})
    scheduler, _ = make(source)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    states = scheduler.targets("fake")
    await wait_until(lambda: len(states) == 50 and all(st.records for st in states.values()))
    stop.set()
    await asyncio.wait_for(task, 5)
    firsts = [r for r in caplog.records if r.getMessage() == "first records from target"]
    assert sorted(r.target for r in firsts) == sorted(keys)  # type: ignore[attr-defined]
    summaries = [m for m in _messages(caplog, logging.INFO) if "first records from" in m]
    assert 1 <= len(summaries) <= 2, summaries  # at the next refresh or at stop, not one per target
    counted = sum(int(m.split("first records from ")[1].split()[0]) for m in summaries)
    assert counted == 50
    polled = [r for r in caplog.records if r.getMessage() == "polled"]
    assert polled and {r.source for r in polled} == {"fake"}  # type: ignore[attr-defined]


async def test_no_per_poll_lines_above_debug(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="collector_plugin.scheduler")
    source = FakeSource([FakeTarget("fake/a")], {"fake/a": "active"})
    scheduler, sink = make(source)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await wait_until(lambda: len(sink.spans) >= 20)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len([r for r in caplog.records if r.name == "collector_plugin.scheduler"]) <= 2


@dataclass
class RevisedTarget:
    key: str
    revision: str | None
    active: bool = True


class QuickRefresh(SourceConfig):
    @property
    def refresh_interval(self) -> float:
        return 0.01


@dataclass
class ListingSource(FakeSource):
    """Lists one target whose revision the test changes; counts listings, notes each poll's priority."""

    listed: list[RevisedTarget] = field(default_factory=list)
    listings: int = 0
    priorities: list[Priority] = field(default_factory=list)

    async def targets(self) -> Sequence[Any]:
        self.listings += 1
        return list(self.listed)

    def open(self, target: Any, cursor: str | None) -> Any:
        source = self

        class Reader(FakeReader):
            async def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
                source.priorities.append(CALL.get().priority)
                async for span in super().poll(draining=draining):
                    yield span

        return Reader(target.key, cursor, "idle", self.log)


async def _until(check: Callable[[], bool], guard: float = 20.0) -> None:
    async with asyncio.timeout(guard):
        while not check():
            await asyncio.sleep(0.005)


async def test_a_target_listed_with_a_new_revision_is_polled_at_once_as_news() -> None:
    source = ListingSource(listed=[RevisedTarget("fake/svc", "running@1")])
    config = QuickRefresh(poll_interval=3600, max_poll_interval=3600)
    scheduler = Scheduler([SourceRuntime("fake", source, config)], Sink(), {}, Metrics(), jitter=False)  # type: ignore[list-item]
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        await _until(lambda: len(source.log) == 1)
        seen = source.listings
        await _until(lambda: source.listings >= seen + 5)  # listed again, unchanged: not polled
        assert len(source.log) == 1
        source.listed = [RevisedTarget("fake/svc", "deploying@2")]
        await _until(lambda: len(source.log) == 2)  # an hour early: the listing showed news
        seen = source.listings
        source.listed = [RevisedTarget("fake/svc", None)]  # no revision: nothing to compare
        await _until(lambda: source.listings >= seen + 5)
        assert len(source.log) == 2
    finally:
        stop.set()
        await task
    assert source.priorities == [Priority.NEW, Priority.NEWS]
