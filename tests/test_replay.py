"""Replays are byte-identical: read again from a committed cursor, a record equals its first copy.

Loki keeps a replayed entry only once if it is identical in timestamp, line and structured
metadata (shared/LOKI.md), so the observed time of a log line must come back the same: the
read-time journal (collector_plugin.journal) remembers it in the checkpoint store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from log_helpers import FakeClock, Harness
from modelarts_helpers import modelarts_context

from collector_plugin.auth import AkSkAuth
from collector_plugin.backoff import Backoff
from collector_plugin.errors import CheckpointError, StoreUnavailable
from collector_plugin.journal import MAX_RANGES, MemoryJournal, ReadJournal
from collector_plugin.records import Record
from collector_plugin.simulator import Scenario, Simulator
from collector_plugin.sources.modelarts.client import ModelArtsClient
from collector_plugin.sources.modelarts.events.source import EventsConfig, EventsSource
from collector_plugin.sources.modelarts.task_logs import TaskLogsConfig, TaskLogsSource
from collector_plugin.store.sqlite import CheckpointStore


def fields(record: Record) -> tuple[Any, ...]:
    """Everything that reaches Loki: resource, times, body, attributes, severity, event name."""
    return (
        record.resource.items,
        record.time_ns,
        record.observed_ns,
        record.body,
        tuple(sorted(record.all_attributes().items(), key=lambda kv: kv[0])),
        record.severity_number,
        record.severity_text,
        record.event_name,
    )


@pytest.fixture
def sim() -> Iterator[Simulator]:
    scenario = Scenario()
    with Simulator(scenario) as s:
        yield s


def client_for(sim: Simulator) -> ModelArtsClient:
    return ModelArtsClient.connect(
        sim.url, sim.project_id, auth=AkSkAuth(sim.ak, sim.sk), retry=Backoff(0.001, 0.01, 6), rate_limit=1e4, burst=1e4
    )


async def test_task_log_lines_read_again_after_a_crash_are_identical(sim: Simulator, tmp_path: Path) -> None:
    log = sim.scenario.add_job("job-1", tasks=("worker-0",)).task("worker-0")
    log.append(b"[INFO] step 1\n[INFO] step 2\npartial")
    store = CheckpointStore.open(str(tmp_path / "c.db"))
    clock = FakeClock()
    async with client_for(sim) as client:
        cfg = TaskLogsConfig(start_at="beginning", jobs=[{"id": "job-1", "tasks": ["worker-0"]}])

        def source() -> TaskLogsSource:
            return TaskLogsSource(cfg, modelarts_context(client, clock_ns=clock, journal=ReadJournal(store)))

        first = Harness(source(), (await source().targets())[0])
        await first.poll()
        committed = first.spans[0].cursor  # the crash: only the first span's cursor was committed
        clock.advance(5)
        log.append(b" line\n[WARN] step 3\n")
        await first.poll()
        clock.advance(60)  # the receiver comes back a minute later
        again = Harness(source(), first.target)
        again.reader = again.source.open(again.target, committed)
        await again.poll()
    store.close()
    assert [r.body for r in again.records] == [r.body for r in first.records]
    assert [fields(r) for r in again.records] == [fields(r) for r in first.records]
    observed = [r.observed_ns for r in first.records]
    assert observed == sorted(observed)  # never decreasing in offset order
    assert observed[0] != observed[-1]  # the later read kept its own, later time


async def test_events_read_again_are_identical_and_identical_events_stay_distinct(sim: Simulator) -> None:
    job = sim.scenario.add_job("job-2", tasks=("worker-0",))
    for text in ("pulled image", "pulled image", "started"):  # the same event twice at one second
        job.add_event(text, time_ms=1_700_000_000_000)
    journal = ReadJournal(MemoryJournal())
    clock = FakeClock()
    async with client_for(sim) as client:
        cfg = EventsConfig(start_at="beginning", jobs=[{"id": "job-2"}])

        def source() -> EventsSource:
            return EventsSource(cfg, modelarts_context(client, clock_ns=clock, journal=journal))

        target = (await source().targets())[0]
        first = Harness(source(), target)
        await first.poll()
        clock.advance(30)
        again = Harness(source(), target)
        await again.poll()
    assert [fields(r) for r in again.records] == [fields(r) for r in first.records]
    twins = [r for r in first.records if r.body == "pulled image"]
    assert len(twins) == 2 and fields(twins[0]) != fields(twins[1])  # the uid tells them apart


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 50), st.integers(0, 10**6)), min_size=1, max_size=40))
def test_journal_times_are_reproducible_and_never_decrease(reads: list[tuple[int, int, int]]) -> None:
    """Any sequence of reads (overlapping, repeated, out of order): a second journal over the same
    backend answers every position as the first did, and times never decrease along the log."""
    backend = MemoryJournal()
    times = ReadJournal(backend).open("log")
    now = 0
    for start, length, step in reads:
        now += step
        times.stamp(start, start + length, now)
    again = ReadJournal(backend).open("log")
    positions = range(0, times.end)
    assert [again.at(p, -1) for p in positions] == [times.at(p, -1) for p in positions]
    stamped = [times.at(p, -1) for p in positions]
    assert stamped == sorted(stamped)


def test_journal_is_bounded_and_pruned_below_the_committed_cursor() -> None:
    backend = MemoryJournal()
    times = ReadJournal(backend).open("log")
    for i in range(MAX_RANGES + 10):
        times.stamp(i, i + 1, i)
    assert len(backend.ranges["log"]) <= MAX_RANGES
    ReadJournal(backend).open("log", resume=MAX_RANGES)
    assert all(end > MAX_RANGES for _, end, _ in backend.ranges["log"])


def test_an_unreachable_store_fails_the_read_instead_of_stamping_from_memory() -> None:
    """With several replicas another one may read the log again meanwhile: nothing goes out with a
    time the journal does not hold. A full disk (any other store error) still degrades."""

    class Down(MemoryJournal):
        def __init__(self, error: Exception) -> None:
            super().__init__()
            self.error = error

        def add_read_time(self, key: str, start: int, end: int, time_ns: int) -> None:
            raise self.error

    times = ReadJournal(Down(StoreUnavailable("checkpoint store PostgreSQL (host=db) is unavailable"))).open("k")
    with pytest.raises(StoreUnavailable):
        times.stamp(0, 10, 1_000)
    assert times.end == 0  # nothing remembered: the read is retried and stamped then
    full = ReadJournal(Down(CheckpointError("disk full"))).open("k")
    full.stamp(0, 10, 1_000)
    assert full.at(5, 0) == 1_000


async def test_a_flushed_line_resumed_from_its_cursor_keeps_the_severity_of_its_start(
    sim: Simulator, tmp_path: Path
) -> None:
    # "[ERROR] disk" is flushed as a partial record and committed; the rest of the line, read
    # after a crash from that cursor, must carry the same severity as its first copy did
    log = sim.scenario.add_job("job-3", tasks=("worker-0",)).task("worker-0")
    log.append(b"[INFO] step 1\n[ERROR] disk")
    store = CheckpointStore.open(str(tmp_path / "c.db"))
    clock = FakeClock()
    async with client_for(sim) as client:
        cfg = TaskLogsConfig(start_at="beginning", flush_after=1.0, jobs=[{"id": "job-3", "tasks": ["worker-0"]}])

        def source() -> TaskLogsSource:
            return TaskLogsSource(cfg, modelarts_context(client, clock_ns=clock, journal=ReadJournal(store)))

        first = Harness(source(), (await source().targets())[0])
        await first.poll()
        clock.advance(5)
        await first.poll()  # the partial line is flushed
        committed = first.spans[-1].cursor
        assert [r.body for r in first.records] == ["[INFO] step 1", "[ERROR] disk"]
        log.append(b" full\n")
        await first.poll()
        again = Harness(source(), first.target)
        again.reader = again.source.open(again.target, committed)
        await again.poll()
    store.close()
    assert [r.body for r in first.records][-1] == " full"
    assert [fields(r) for r in again.records] == [fields(r) for r in first.records[-1:]]
    assert again.records[0].severity_text == "ERROR"


def test_a_log_cursor_keeps_the_inherited_severity_only_where_a_record_is_continued() -> None:
    from collector_plugin.api import BadCursor, CursorCodec
    from collector_plugin.sources.modelarts.log_reader import LogCursor

    codec = CursorCodec("training_task_logs")
    kept = LogCursor(26, True, 0, b"", None, (17, "ERROR"))
    assert LogCursor.loads(kept.dumps(codec), codec).severity == (17, "ERROR")
    assert LogCursor.loads(LogCursor(26, False, 0, b"", None, (17, "ERROR")).dumps(codec), codec).severity is None
    assert LogCursor.loads(LogCursor(26, True).dumps(codec), codec).severity is None  # older cursors: none
    for bad in ('"ERROR"', "[17]", '["17", "ERROR"]', "[17, 5]"):
        text = kept.dumps(codec).replace('[17,"ERROR"]', bad)
        assert text != kept.dumps(codec)
        with pytest.raises(BadCursor):
            LogCursor.loads(text, codec)
