"""``training_job_events``: every event exactly once, against the simulator and as a pure model."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modelarts_helpers import modelarts_context

from collector_plugin.backoff import Backoff
from collector_plugin.errors import ApiError
from collector_plugin.records import Record, Span
from collector_plugin.simulator import Simulator
from collector_plugin.simulator.scenario import now_ms
from collector_plugin.simulator.server import EVENTS
from collector_plugin.source import BadCursor
from collector_plugin.sources.modelarts.client import ModelArtsClient
from collector_plugin.sources.modelarts.events.model import Event, parse_event_time
from collector_plugin.sources.modelarts.events.source import EventsConfig, EventsSource, JobTarget
from collector_plugin.sources.modelarts.events.tracker import EventTracker
from collector_plugin.sources.modelarts.records import EVENT_TRAINING_JOB
from collector_plugin.telemetry import Metrics

FAST_RETRY = Backoff(initial=0.001, maximum=0.01, max_attempts=6)
EVENTS_PATH = r"/training-jobs/[^/]+/events"


@pytest.fixture(params=["item", "page"])
def sim(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    """The simulator, with ``offset`` an item index or (old servers) a page index."""
    quirks = {"events_k8s_lower", "events_strings"} | ({"events_page_offset"} if request.param == "page" else set())
    simulator = Simulator(require_auth=False, quirks=quirks)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[ModelArtsClient]:
    async with ModelArtsClient.connect(sim.url, sim.project_id, retry=FAST_RETRY, rate_limit=10_000, burst=10_000) as c:
        yield c


def source_for(client: ModelArtsClient, metrics: Metrics | None = None, **config: Any) -> EventsSource:
    context = modelarts_context(client, source="training_job_events", metrics=metrics)
    return EventsSource(EventsConfig.model_validate(config), context)


async def poll(source: EventsSource, job_id: str, cursor: str | None) -> list[Span]:
    reader = source.open(JobTarget(job_id), cursor)
    return [span async for span in reader.poll()]


def records(spans: list[Span]) -> list[Record]:
    return [r for s in spans for r in s.records]


def last_cursor(spans: list[Span], previous: str | None) -> str | None:
    cursors = [s.cursor for s in spans if s.cursor is not None]
    return cursors[-1] if cursors else previous


def content(recs: list[Record]) -> Counter[tuple[int, str, str, Any]]:
    return Counter(
        (r.time_ns // 1_000_000_000, r.severity_text, str(r.attributes["modelarts.event.source"]), r.body) for r in recs
    )


def expected(sim: Simulator, job_id: str) -> Counter[tuple[int, str, str, Any]]:
    source = {"k8s": "K8S", "job": "Job", "task": "Task"}
    return Counter(
        (e.time_ms // 1000, e.level, source.get(e.source.lower(), e.source), e.message)
        for e in sim.scenario.job(job_id).events
    )


def add_crowd(job: Any, base: int, n: int) -> None:
    """``n`` events on few timestamps, many of them identical, levels and sources mixed."""
    levels = ["Info", "Warning", "Error"]
    sources = ["Job", "K8S", "Task"]
    for i in range(n):
        job.add_event(f"step {i % 4}", level=levels[i % 3], source=sources[(i // 3) % 3], time_ms=base + (i % 5) * 1000)


async def test_every_event_once_across_pages_with_shared_timestamps(sim: Simulator, client: ModelArtsClient) -> None:
    job = sim.scenario.add_job()
    add_crowd(job, now_ms() - 3_600_000, 250)
    source = source_for(client, page_size=7)
    spans = await poll(source, job.id, None)
    recs = records(spans)
    assert len(recs) == 250
    assert content(recs) == expected(sim, job.id)
    assert len({r.uid for r in recs}) == 250
    assert all(r.event_name == EVENT_TRAINING_JOB for r in recs)

    again = await poll(source, job.id, last_cursor(spans, None))
    assert records(again) == []


async def test_more_identical_events_than_a_page_at_one_timestamp(sim: Simulator, client: ModelArtsClient) -> None:
    """The offset mode cannot be seen from the events themselves: the ``total`` probe decides."""
    job = sim.scenario.add_job()
    t = now_ms() - 60_000
    for _ in range(23):
        job.add_event("pod scheduled", time_ms=t)
    source = source_for(client, page_size=5)
    recs = records(await poll(source, job.id, None))
    assert len(recs) == 23
    assert len({r.uid for r in recs}) == 23


async def test_late_events_within_lookback_are_caught_once(sim: Simulator, client: ModelArtsClient) -> None:
    job = sim.scenario.add_job()
    base = now_ms() - 600_000
    for i in range(30):
        job.add_event(f"early {i}", time_ms=base + i * 2000)
    source = source_for(client, page_size=10, lookback=300)
    first = await poll(source, job.id, None)
    assert len(records(first)) == 30
    cursor = last_cursor(first, None)

    late = [job.add_event("late arrival", level="Warning", time_ms=base + 40_000) for _ in range(2)]
    job.add_event("early 25", time_ms=base + 25 * 2000)  # an identical twin of one already read
    job.add_event("new", level="Error", source="K8s", time_ms=base + 100_000)
    second = await poll(source, job.id, cursor)
    got = sorted((r.body, r.severity_number) for r in records(second))
    assert got == sorted([("late arrival", 13)] * len(late) + [("early 25", 9), ("new", 17)])
    assert content(records(first) + records(second)) == expected(sim, job.id)

    third = await poll(source, job.id, last_cursor(second, cursor))
    assert records(third) == []


async def test_exactly_once_under_throttling_and_server_errors(sim: Simulator, client: ModelArtsClient) -> None:
    job = sim.scenario.add_job()
    add_crowd(job, now_ms() - 100_000, 60)
    sim.faults.throttle(EVENTS_PATH, retry_after=0, times=3)
    sim.faults.error(EVENTS_PATH, status=503, times=1)
    sim.faults.error(EVENTS_PATH, status=500, times=1)
    recs = records(await poll(source_for(client, page_size=9), job.id, None))
    assert content(recs) == expected(sim, job.id)
    assert sim.faults.pending == 0


async def test_a_poll_that_fails_midway_resumes_from_the_last_span(sim: Simulator, client: ModelArtsClient) -> None:
    job = sim.scenario.add_job()
    add_crowd(job, now_ms() - 100_000, 60)
    source = source_for(client, page_size=9)
    reader = source.open(JobTarget(job.id), None)
    delivered: list[Span] = []
    with pytest.raises(ApiError):
        async for span in reader.poll():
            delivered.append(span)
            sim.faults.error(EVENTS_PATH, status=503, times=None)
    assert len(delivered) == 1
    sim.faults.clear()
    resumed = await poll(source, job.id, delivered[-1].cursor)
    assert content(records(delivered) + records(resumed)) == expected(sim, job.id)


async def test_restart_from_any_span_cursor_repeats_nothing(sim: Simulator, client: ModelArtsClient) -> None:
    job = sim.scenario.add_job()
    add_crowd(job, now_ms() - 200_000, 40)
    for i in range(40):
        job.add_event(f"later {i}", time_ms=now_ms() - 100_000 + i * 1000)
    source = source_for(client, page_size=10)
    spans = await poll(source, job.id, None)
    assert len([s for s in spans if s.records]) > 2
    for cut in range(len(spans)):
        delivered = records(spans[: cut + 1])
        resumed = records(await poll(source, job.id, spans[cut].cursor))
        assert content(delivered + resumed) == expected(sim, job.id), cut
        assert not {r.uid for r in delivered} & {r.uid for r in resumed}


async def test_uids_are_stable_across_replays(sim: Simulator, client: ModelArtsClient) -> None:
    job = sim.scenario.add_job()
    add_crowd(job, now_ms() - 50_000, 30)
    source = source_for(client, page_size=4)
    first = [r.uid for r in records(await poll(source, job.id, None))]
    second = [r.uid for r in records(await poll(source, job.id, None))]
    assert first == second


async def test_start_at_end_reads_only_what_comes_later(sim: Simulator, client: ModelArtsClient) -> None:
    job = sim.scenario.add_job()
    add_crowd(job, now_ms() - 50_000, 30)
    source = source_for(client, start_at="end", page_size=8)
    reader = source.open(JobTarget(job.id), None)
    first = [s async for s in reader.poll()]
    assert records(first) == []
    assert first[-1].cursor is not None
    job.add_event("after start", level="Error")
    job.add_event("late but unseen", time_ms=now_ms() - 40_000)
    second = [s async for s in reader.poll()]
    assert sorted(r.body for r in records(second)) == ["after start", "late but unseen"]
    # a new reader resuming from the committed cursor agrees
    assert records(await poll(source, job.id, second[-1].cursor)) == []


async def test_severity_source_time_and_attributes(sim: Simulator, client: ModelArtsClient) -> None:
    job = sim.scenario.add_job(name="bert")
    t = 1_700_000_000_000
    job.add_event("a", level="Info", source="K8S", time_ms=t)
    job.add_event("b", level="Warning", source="Task", time_ms=t + 1000)
    job.add_event("c", level="Error", source="Job", time_ms=t + 2000)
    job.add_event("d", level="Fatalish", source="job", time_ms=t + 3000)
    metrics = Metrics()
    source = source_for(client, metrics, jobs=[{"id": job.id}])
    (target,) = await source.targets()
    assert target.key == f"training_job_events/{job.id}"
    reader = source.open(target, None)
    recs = records([s async for s in reader.poll()])
    got = [
        (r.body, r.severity_number, r.severity_text, r.attributes["modelarts.event.source"], r.time_ns) for r in recs
    ]
    assert got == [
        ("a", 9, "Info", "K8S", t * 1_000_000),
        ("b", 13, "Warning", "Task", (t + 1000) * 1_000_000),
        ("c", 17, "Error", "Job", (t + 2000) * 1_000_000),
        ("d", 0, "Fatalish", "Job", (t + 3000) * 1_000_000),
    ]
    assert recs[0].shared.as_dict() == {"modelarts.training_job.id": job.id, "modelarts.training_job.name": "bert"}


async def test_requests_carry_a_window_with_both_times_and_ascending_order(
    sim: Simulator, client: ModelArtsClient
) -> None:
    job = sim.scenario.add_job()
    job.add_event("x", time_ms=now_ms() - 10_000)
    source = source_for(client)
    spans = await poll(source, job.id, None)
    sim.reset_requests()
    await poll(source, job.id, last_cursor(spans, None))
    (req,) = [r for r in sim.requests if r.endpoint == EVENTS]
    assert req.query["order"] == "asc"
    assert int(req.query["start_time"]) < now_ms() < int(req.query["end_time"])


async def test_targets_from_config_and_discovery_drain_ended_jobs_once(sim: Simulator, client: ModelArtsClient) -> None:
    done = sim.scenario.add_job(name="finished", phase="Completed")
    running = sim.scenario.add_job(name="train-a")
    metrics = Metrics()
    source = source_for(client, metrics, jobs=[{"id": done.id}], discovery={"enabled": True, "name_pattern": "^train"})
    first = {t.key: t.active for t in await source.targets()}
    assert first == {f"training_job_events/{done.id}": False, f"training_job_events/{running.id}": True}

    running.phase = "Failed"
    second = {t.key: t.active for t in await source.targets()}
    assert second == {f"training_job_events/{running.id}": False}
    assert await source.targets() == []


def test_parse_event_time_formats() -> None:
    assert parse_event_time("2021-06-01T10:00:00+08:00") == 1622512800000
    assert parse_event_time("2021-06-01T02:00:00Z") == 1622512800000
    assert parse_event_time("2021-06-01T02:00:00.250") == 1622512800250
    assert parse_event_time("1622512800250") == 1622512800250
    assert parse_event_time(1622512800250) == 1622512800250
    for bad in ("yesterday", float("inf"), float("nan"), -1, 10**30, "1969-12-31T23:59:59Z"):
        with pytest.raises(ValueError):
            parse_event_time(bad)


@given(
    st.integers(min_value=0, max_value=4_000_000_000_000),
    st.integers(min_value=-12 * 60, max_value=14 * 60),
)
def test_parse_event_time_iso_round_trip(ms: int, offset_minutes: int) -> None:
    tz = timezone(timedelta(minutes=offset_minutes))
    text = datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="milliseconds")
    assert parse_event_time(text) == ms


def test_unreadable_cursor_is_a_bad_cursor() -> None:
    with pytest.raises(BadCursor, match="unreadable cursor"):
        EventTracker.from_cursor("{not json", lookback_ms=0)


# --- the pure tracker as a model: events arrive (some late), scans page through the window ----

_event = st.tuples(st.integers(0, 30), st.sampled_from(["Info", "Error"]), st.sampled_from(["m", "n"]))


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(st.lists(_event, max_size=12), min_size=1, max_size=6),
    page=st.integers(1, 7),
    restarts=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_tracker_model_exactly_once(batches: list[list[tuple[int, str, str]]], page: int, restarts: list[bool]) -> None:
    """Whatever arrives (late within lookback, identical twins), the scans emit each event once."""
    lookback = 10
    server: list[tuple[int, int, Event]] = []  # (time, arrival, event): server order
    emitted: list[str] = []
    cursor: str | None = None
    tracker = EventTracker.from_cursor(None, lookback_ms=lookback)
    high = 0
    arrival = 0
    for batch_no, batch in enumerate(batches):
        for dt, level, message in batch:
            time_ms = max(0, high - lookback) + dt  # late events stay within lookback
            arrival += 1
            server.append((time_ms, arrival, Event(time_ms, level, "Job", message)))
            high = max(high, time_ms)
        server.sort(key=lambda x: (x[0], x[1]))
        if restarts[batch_no]:
            tracker = EventTracker.from_cursor(cursor, lookback_ms=lookback)
        window = [e for _, _, e in server if e.time_ms >= tracker.floor]
        tracker.begin_scan()
        for start in range(0, len(window), page):
            chunk = window[start : start + page]
            emitted.extend(i for i in map(tracker.accept, chunk) if i is not None)
            tracker.page_done(chunk[-1].time_ms, True)
        tracker.end_scan()
        cursor = tracker.cursor()
        json.loads(cursor)
    assert len(emitted) == len(set(emitted))
    assert len(emitted) == len(server)


def test_tracker_bounds_the_cursor_and_forgets_oldest_times() -> None:
    tracker = EventTracker.from_cursor(None, lookback_ms=10**9, max_seen=50)
    tracker.begin_scan()
    for t in range(200):
        assert tracker.accept(Event(t, "Info", "Job", "x")) is not None
    tracker.end_scan()
    assert tracker.seen_count <= 50
    assert tracker.floor == 150
    # what was forgotten counts as read: never emitted again
    restored = EventTracker.from_cursor(tracker.cursor(), lookback_ms=10**9, max_seen=50)
    restored.begin_scan()
    assert [restored.accept(Event(t, "Info", "Job", "x")) for t in range(200)] == [None] * 200
