"""Bounded on every axis (issue 12): work done and memory held per poll, whatever the log or job holds.

One test per axis, against the in-process simulator: a task log of huge lines, a log of bare
LFs, a 5 MB preview that is one line without an end, 10,000 events inside the lookback window.
Each poll is measured by :func:`measure`: API requests and answer bytes (the simulator's log),
records per span, the largest record body, and the peak of ``tracemalloc`` during the poll. The
simulator runs in this process, so that peak includes its share (it builds whole answers in
memory): the bounds are generous, and what they catch is memory that grows with the log.
Nothing here depends on machine speed; ``tests/benchmarks/bench_bounded.py`` prints the figures.
"""

from __future__ import annotations

import hashlib
import json
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from log_helpers import FakeClock, expected_lines
from modelarts_helpers import modelarts_context

from collector_plugin.backoff import Backoff
from collector_plugin.lines import DEFAULT_MAX_BATCH_LINES, LOKI_MAX_LINE_BYTES, LineAssembler
from collector_plugin.records import Span
from collector_plugin.simulator import Scenario, Simulator
from collector_plugin.simulator.protocol import PREVIEW_CAP
from collector_plugin.simulator.scenario import now_ms
from collector_plugin.source import Reader
from collector_plugin.sources.modelarts.client import ModelArtsClient
from collector_plugin.sources.modelarts.events.model import Event
from collector_plugin.sources.modelarts.events.source import EventsConfig, EventsReader, EventsSource, JobTarget
from collector_plugin.sources.modelarts.events.tracker import MAX_SEEN, EventTracker
from collector_plugin.sources.modelarts.task_logs import (
    OBS_CHUNK_BYTES,
    PREVIEW_SPAN_BYTES,
    TaskLogsConfig,
    TaskLogsSource,
    TaskLogTarget,
)

MiB = 1 << 20
PREVIEW = "/v2/{project_id}/training-jobs/{id}/tasks/{task}/logs/preview"
LINK = "/v2/{project_id}/training-jobs/{id}/tasks/{task}/logs/url"
OBS = "/obs/{bucket}/{object}"
FAST_RETRY = Backoff(initial=0.001, maximum=0.01, max_attempts=6)
MEMORY_BOUND = 64 * MiB  # a poll's peak, the in-process simulator's answers included
NEWLINES_MEMORY_BOUND = 16 * MiB  # records are the cost here: ~5 MB measured, ~260 MB uncapped
EVENTS_MEMORY_BOUND = 16 * MiB


@dataclass
class PollStats:
    """What one poll did: requests by endpoint, answer bytes, spans and records, peak memory."""

    requests: Counter[str] = field(default_factory=Counter)
    fetched: int = 0
    spans: int = 0
    records: int = 0
    max_span_records: int = 0
    max_body_bytes: int = 0
    span_bytes: int = 0
    peak_bytes: int = 0
    cpu_s: float = 0.0

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


class Content:
    """The text of a log's line records, pieces joined, folded into a hash (the records are not kept)."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self._first = True
        self._offset = -1  # a record's uid derives from its offset: increasing offsets, no record twice
        self.offsets: list[int] = []  # the offset of each span's cursor, in order

    def add(self, span: Span) -> None:
        for rec in span.records:
            if rec.event_name:
                continue
            offset = rec.attributes["modelarts.log.offset"]
            assert isinstance(offset, int) and offset > self._offset, "a record came twice"
            self._offset = offset
            if not rec.attributes.get("modelarts.log.continued") and not self._first:
                self._hash.update(b"\n")
            self._first = False
            self._hash.update(str(rec.body).encode("utf-8", "surrogatepass"))
        if span.cursor is not None:
            self.offsets.append(json.loads(span.cursor)["offset"])

    def digest(self) -> str:
        return self._hash.hexdigest()


def digest_of(lines: list[str]) -> str:
    content = hashlib.blake2b(digest_size=16)
    content.update("\n".join(lines).encode("utf-8", "surrogatepass"))
    return content.hexdigest()


@dataclass
class Traced:
    """``tracemalloc`` around a block: the peak of what it allocated (``on=False``: not traced)."""

    on: bool = True
    peak: int = 0
    _base: int = 0
    _was_on: bool = False

    def __enter__(self) -> Traced:
        if self.on:
            self._was_on = tracemalloc.is_tracing()
            if not self._was_on:
                tracemalloc.start()
            tracemalloc.reset_peak()
            self._base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.on:
            self.peak = tracemalloc.get_traced_memory()[1] - self._base
            if not self._was_on:
                tracemalloc.stop()


async def measure(
    reader: Reader,
    sim: Simulator,
    sink: Callable[[Span], None] | None = None,
    *,
    draining: bool = False,
    trace: bool = True,
) -> PollStats:
    """Poll ``reader`` once and say what it cost; each span goes to ``sink`` and is not kept."""
    stats = PollStats()
    sim.reset_requests()
    cpu = time.thread_time()  # this thread runs the reader; the simulator has its own
    with Traced(trace) as traced:
        async for span in reader.poll(draining=draining):
            stats.spans += 1
            stats.records += len(span.records)
            stats.span_bytes = max(stats.span_bytes, span.nbytes)
            stats.max_span_records = max(stats.max_span_records, len(span.records))
            for rec in span.records:
                if isinstance(rec.body, str):
                    stats.max_body_bytes = max(stats.max_body_bytes, len(rec.body.encode("utf-8", "surrogatepass")))
            if sink is not None:
                sink(span)
            del span  # not held while the next one is made
    stats.cpu_s = time.thread_time() - cpu
    stats.peak_bytes = traced.peak
    for request in sim.requests:
        stats.requests[request.endpoint] += 1
        stats.fetched += request.nbytes
    return stats


# --- task logs ---------------------------------------------------------------------------------


@dataclass
class LogCase:
    sim: Simulator
    client: ModelArtsClient
    reader: Reader
    clock: FakeClock


@pytest.fixture
def sims() -> Iterator[list[Simulator]]:
    started: list[Simulator] = []
    yield started
    for sim in started:
        sim.stop()


async def log_case(sims: list[Simulator], data: bytes, *, preview_cap: int = PREVIEW_CAP, **config: Any) -> LogCase:
    """One task log holding ``data`` and a reader of it from the beginning (``flush_after`` 5 s of ``clock``)."""
    scenario = Scenario()
    scenario.add_job("job-1", tasks=("worker-0",)).task("worker-0").append(data)
    sim = Simulator(scenario, require_auth=False, preview_cap=preview_cap).start()
    sims.append(sim)
    client = ModelArtsClient.connect(sim.url, sim.project_id, retry=FAST_RETRY, rate_limit=10_000, burst=10_000)
    clock = FakeClock()
    context = modelarts_context(client, source="training_task_logs", clock_ns=clock)
    settings_ = TaskLogsConfig.model_validate({"jobs": [{"id": "job-1"}], "start_at": "beginning", **config})
    reader = TaskLogsSource(settings_, context).open(TaskLogTarget("job-1", "worker-0"), None)
    return LogCase(sim, client, reader, clock)


def huge_lines(total: int, line: int) -> bytes:
    """``total`` bytes of ``line``-byte lines of multibyte text (so pieces must cut at characters)."""
    unit = "ab中文😀 ".encode()
    body = (unit * (line // len(unit) + 1))[: line - 1]
    while body[-1] & 0xC0 == 0x80 or body[-1] >= 0xC0:  # end on a whole character
        body = body[:-1]
    body += b"x" * (line - 1 - len(body))
    return (body + b"\n") * (total // line)


@pytest.mark.parametrize("first_draining", [False, True], ids=["live", "drain"])
async def test_a_log_of_huge_lines_comes_in_bounded_pieces_and_whole(
    sims: list[Simulator], first_draining: bool
) -> None:
    """8 MiB of 1 MiB lines from the beginning: all through OBS spans on a live read; a drain
    (backfill's read) takes 3 MiB through OBS spans and 5 MiB through the preview."""
    data = huge_lines(8 * MiB, MiB)
    case = await log_case(sims, data)
    content = Content()
    async with case.client:
        first = await measure(case.reader, case.sim, content.add, draining=first_draining)
        # one streamed range for the backlog; a live read knows it starts at 0 and skips the preview
        assert first.requests == ({PREVIEW: 1, LINK: 1, OBS: 1} if first_draining else {LINK: 1, OBS: 1})
        assert first.fetched < len(data) + 4 * MiB  # each byte once (the preview's JSON escapes aside)
        assert first.max_body_bytes <= LOKI_MAX_LINE_BYTES
        assert first.span_bytes <= max(OBS_CHUNK_BYTES, PREVIEW_SPAN_BYTES)
        assert first.records == 8 * 5  # each line in five pieces of at most 256,000 bytes
        assert first.peak_bytes < MEMORY_BOUND, first.peak_bytes

        idle = await measure(case.reader, case.sim, content.add)
        assert (idle.records, idle.total_requests, idle.requests[PREVIEW]) == (0, 1, 0)  # a Range read on OBS
        assert idle.fetched < 1024
        drained = await measure(case.reader, case.sim, content.add, draining=True)
        assert drained.records == 1  # the completeness record
    assert content.digest() == digest_of(expected_lines(data))
    assert content.offsets == sorted(content.offsets) and content.offsets[-1] == len(data)


async def test_a_log_of_only_newlines_gives_bounded_spans_of_empty_records(sims: list[Simulator]) -> None:
    """Bare LFs: one empty record each (README: one record per LF line), at most 8,192 a span.

    Uncapped, a 256 KiB span made 262,144 records at once (~130 MB). 256 KiB, half through OBS
    and half through the preview (each half 16 times the cap), keeps the test short (records
    cost ~40 us each under ``tracemalloc``); the benchmark reads 2 MiB.
    """
    data = b"\n" * (256 << 10)
    case = await log_case(sims, data, preview_cap=128 << 10)
    content = Content()
    async with case.client:
        first = await measure(case.reader, case.sim, content.add, draining=True)  # a drain reads the preview too
        assert first.requests == {PREVIEW: 1, LINK: 1, OBS: 1}
        assert first.fetched < 3 * len(data)  # the preview's JSON escapes each LF as two bytes
        assert first.records == len(data)
        assert first.max_body_bytes == 0
        assert first.max_span_records <= DEFAULT_MAX_BATCH_LINES
        assert first.peak_bytes < NEWLINES_MEMORY_BOUND, first.peak_bytes
        idle = await measure(case.reader, case.sim, content.add)
        assert (idle.records, idle.requests[PREVIEW]) == (0, 0)
    assert content.digest() == digest_of([""] * len(data))
    steps = [b - a for a, b in zip(content.offsets, content.offsets[1:], strict=False)]
    assert all(0 <= step <= DEFAULT_MAX_BATCH_LINES for step in steps)  # every span's cursor moves on
    assert content.offsets[-1] == len(data)


async def test_a_5mb_preview_of_one_unended_line_is_read_once_in_bounded_pieces(sims: list[Simulator]) -> None:
    line = huge_lines(5_000_001, 5_000_001)[:-1]  # 5,000,000 bytes, no LF
    case = await log_case(sims, line, start_at="end")  # the default: its first read is the preview
    content = Content()
    async with case.client:
        first = await measure(case.reader, case.sim, content.add)
        assert first.requests == {PREVIEW: 1}
        assert first.max_body_bytes <= LOKI_MAX_LINE_BYTES
        assert first.records == len(line) // LOKI_MAX_LINE_BYTES  # whole pieces; the rest waits
        assert first.peak_bytes < MEMORY_BOUND, first.peak_bytes

        again = await measure(case.reader, case.sim, content.add)  # not re-emitted, and no 5 MB preview again
        assert (again.records, again.requests[PREVIEW]) == (0, 0)
        assert again.fetched < 1024
        case.clock.advance(5.1)  # flush_after: the rest goes out as a partial line
        flushed = await measure(case.reader, case.sim, content.add)
        assert flushed.records == 1 and flushed.requests[PREVIEW] == 0
        later = await measure(case.reader, case.sim, content.add)
        assert (later.records, later.requests[PREVIEW]) == (0, 0)
    assert content.digest() == digest_of([line.decode()])


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(
        st.sampled_from([b"\n", b"\r", b"\r\n", b"a", b"\x1b[31m", b"\xff", "中".encode(), b"T", b"x" * 70]),
        max_size=300,
    ).map(b"".join),
    limit=st.integers(4, 80),
    max_lines=st.integers(32, 80),
    grouped=st.booleans(),
    every=st.integers(0, 3),
)
def test_feed_batches_caps_lines_per_batch_and_changes_nothing_else(
    data: bytes, limit: int, max_lines: int, grouped: bool, every: int
) -> None:
    """Whatever the bytes: at most ``max_lines`` per batch, the lines of one feed, a cursor between."""
    options: dict[str, Any] = {"line_start_pattern": "T" if grouped else None, "progress_every": every}
    whole = LineAssembler(limit, **options)
    expected = whole.feed(data, 0) + whole.flush(final=True)
    batched = LineAssembler(limit, **options)
    got = []
    end = 0
    for lines, size in batched.feed_batches(data, 0, max_lines):
        assert len(lines) <= max_lines
        got += lines
        end += size
        resumed = LineAssembler(
            limit, offset=batched.pending_offset, continued=batched.pending_continued, **options
        )  # a restart at this batch's cursor emits the rest
        rest = resumed.feed(data[batched.pending_offset :], batched.pending_offset) + resumed.flush(final=True)
        assert got + rest == expected
    assert end == len(data)
    assert got + batched.flush(final=True) == expected


# --- events ------------------------------------------------------------------------------------


@pytest.fixture(params=["item", "page"])
def event_sim(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    """``offset`` as an item index, or (old servers) a page index."""
    quirks = {"events_k8s_lower"} | ({"events_page_offset"} if request.param == "page" else set())
    sim = Simulator(require_auth=False, quirks=quirks).start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
async def event_client(event_sim: Simulator) -> AsyncIterator[ModelArtsClient]:
    async with ModelArtsClient.connect(
        event_sim.url, event_sim.project_id, retry=FAST_RETRY, rate_limit=10_000, burst=10_000
    ) as client:
        yield client


def events_reader(client: ModelArtsClient, job_id: str, cursor: str | None = None) -> EventsReader:
    source = EventsSource(EventsConfig.model_validate({}), modelarts_context(client, source="training_job_events"))
    reader = source.open(JobTarget(job_id), cursor)
    assert isinstance(reader, EventsReader)
    return reader


class EventLog:
    """Event records by (time, body), and the last cursor."""

    def __init__(self) -> None:
        self.seen: Counter[tuple[int, str]] = Counter()
        self.cursor: str | None = None

    def add(self, span: Span) -> None:
        for rec in span.records:
            self.seen[(rec.time_ns // 1_000_000_000, str(rec.body))] += 1
        if span.cursor is not None:
            self.cursor = span.cursor


async def poll_events(reader: EventsReader, sim: Simulator, log: EventLog) -> PollStats:
    return await measure(reader, sim, log.add)


def expected_events(sim: Simulator, job_id: str) -> Counter[tuple[int, str]]:
    return Counter((e.time_ms // 1000, e.message) for e in sim.scenario.job(job_id).events)


async def test_10000_events_in_the_lookback_window_then_idle_polls_cost_one_request(
    event_sim: Simulator, event_client: ModelArtsClient
) -> None:
    job = event_sim.scenario.add_job()
    base = now_ms() - 260_000  # 10,000 events 25 ms apart: all inside the 300 s lookback
    for i in range(10_000):
        job.add_event(f"event {i}", time_ms=base + i * 25)
    reader = events_reader(event_client, job.id)
    log = EventLog()

    first = await poll_events(reader, event_sim, log)
    assert first.records == 10_000
    assert 100 <= first.total_requests <= 103  # 100 pages of 100 (+ the offset-mode probe)
    assert first.max_span_records <= 100
    assert first.peak_bytes < EVENTS_MEMORY_BOUND, first.peak_bytes
    tracker = reader._tracker
    assert tracker.seen_count <= MAX_SEEN + 100 and tracker.counted <= MAX_SEEN + 200

    settle = await poll_events(reader, event_sim, log)  # the narrower window once, read to its end
    assert settle.records == 0 and settle.total_requests <= MAX_SEEN // 100 + 3
    for _ in range(3):
        idle = await poll_events(reader, event_sim, log)
        assert (idle.records, idle.total_requests) == (0, 1)

    late = job.add_event("late", level="Warning", time_ms=base + 9_990 * 25)  # inside the remembered window
    newer = job.add_event("newer", time_ms=base + 10_000 * 25)
    caught = await poll_events(reader, event_sim, log)
    assert caught.records == 2 and caught.total_requests <= MAX_SEEN // 100 + 3
    assert (await poll_events(reader, event_sim, log)).records == 0
    assert (await poll_events(reader, event_sim, log)).total_requests == 1
    assert log.seen == expected_events(event_sim, job.id)
    assert {late.message, newer.message} <= {body for _, body in log.seen}

    resumed = events_reader(event_client, job.id, log.cursor)  # a restart keeps nothing but the cursor
    assert (await poll_events(resumed, event_sim, log)).records == 0
    assert log.seen == expected_events(event_sim, job.id)


async def test_an_idle_window_is_rescanned_when_its_first_page_changes(
    event_sim: Simulator, event_client: ModelArtsClient
) -> None:
    """Same total, different first page (an old event gone, a new one in): no shortcut."""
    job = event_sim.scenario.add_job()
    base = now_ms() - 100_000
    for i in range(250):
        job.add_event(f"event {i}", time_ms=base + i * 100)
    reader = events_reader(event_client, job.id)
    log = EventLog()
    await poll_events(reader, event_sim, log)
    await poll_events(reader, event_sim, log)
    assert (await poll_events(reader, event_sim, log)).total_requests == 1
    with job._lock:
        job._events.pop(0)  # the simulator's list: a server that dropped its oldest event
    job.add_event("replacement", time_ms=base + 250 * 100)
    again = await poll_events(reader, event_sim, log)
    assert again.records == 1 and again.total_requests == 3


async def test_a_burst_larger_than_the_seen_bound_at_one_timestamp_comes_out_whole(
    event_sim: Simulator, event_client: ModelArtsClient
) -> None:
    """More events in one second than the cursor keeps identities for: none lost, none twice."""
    job = event_sim.scenario.add_job()
    t = now_ms() - 30_000
    n = MAX_SEEN + 500
    for i in range(n):
        job.add_event(f"pod-{i} scheduled", source="K8S", time_ms=t)
    reader = events_reader(event_client, job.id)
    log = EventLog()
    cursors: list[str] = []
    async for span in reader.poll():
        log.add(span)
        if span.cursor is not None:
            cursors.append(span.cursor)
    assert sum(log.seen.values()) == n and log.seen == expected_events(event_sim, job.id)
    for cut in (len(cursors) // 3, len(cursors) - 1):  # a restart in the middle of the burst, and after it
        delivered = EventLog()
        resumed = events_reader(event_client, job.id, cursors[cut])
        async for span in resumed.poll():
            delivered.add(span)
        assert all(count == 1 for count in delivered.seen.values())
        assert sum(delivered.seen.values()) == max(0, n - 100 * (cut + 1))


_op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 40), st.integers(0, 3), st.integers(1, 8)),
    st.tuples(st.just("poll"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("restart"), st.just(0), st.just(0), st.just(0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, max_size=14), page_mode=st.booleans())
async def test_polls_with_the_idle_shortcut_deliver_every_event_once(
    ops: list[tuple[str, int, int, int]], page_mode: bool
) -> None:
    """Late events, identical twins, restarts, pages of 3: each event once, idle windows or not."""
    quirks = {"events_page_offset"} if page_mode else set()
    sim = Simulator(require_auth=False, quirks=quirks).start()
    try:
        async with ModelArtsClient.connect(
            sim.url, sim.project_id, retry=FAST_RETRY, rate_limit=10_000, burst=10_000
        ) as client:
            job = sim.scenario.add_job()
            now = now_ms()
            config = EventsConfig.model_validate({"page_size": 3, "lookback": 60})
            source = EventsSource(config, modelarts_context(client, source="training_job_events"))
            reader = source.open(JobTarget(job.id), None)
            log = EventLog()
            for op, back, message, count in [*ops, ("poll", 0, 0, 0), ("poll", 0, 0, 0)]:
                if op == "add":
                    for _ in range(count):
                        job.add_event(f"m{message}", time_ms=now - back * 1000)
                elif op == "restart":
                    reader = source.open(JobTarget(job.id), log.cursor)
                else:
                    async for span in reader.poll():
                        log.add(span)
            assert log.seen == expected_events(sim, job.id)
    finally:
        sim.stop()


_burst = st.lists(st.tuples(st.integers(0, 2), st.integers(1, 30)), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    bursts=_burst, page=st.integers(1, 9), max_seen=st.integers(1, 12), restarts=st.lists(st.booleans(), max_size=12)
)
def test_tracker_bounds_memory_and_loses_no_burst(
    bursts: list[tuple[int, int]], page: int, max_seen: int, restarts: list[bool]
) -> None:
    """Events appended in time order, bursts at one time larger than ``max_seen``: each once, memory bounded."""
    server: list[Event] = []
    emitted: list[str] = []
    t = 1_000
    cursor: str | None = None
    tracker = EventTracker.from_cursor(None, lookback_ms=5, max_seen=max_seen, max_seen_newest=10**6)
    for step, (gap, size) in enumerate(bursts):
        t += gap
        server += [Event(t, "Info", "Job", f"m{i % 3}") for i in range(size)]
        if step < len(restarts) and restarts[step]:
            tracker = EventTracker.from_cursor(cursor, lookback_ms=5, max_seen=max_seen, max_seen_newest=10**6)
        window = [e for e in server if e.time_ms >= tracker.floor]
        tracker.begin_scan()
        for start in range(0, len(window), page):
            chunk = window[start : start + page]
            emitted += [i for i in map(tracker.accept, chunk) if i is not None]
            tracker.page_done(chunk[-1].time_ms, True)
            newest = max(tracker.seen) if tracker.seen else 0
            assert tracker.seen_count <= max_seen + len(tracker.seen.get(newest, ()))
            assert tracker.counted <= tracker.seen_count + page
            cursor = tracker.cursor()
        tracker.end_scan()
        cursor = tracker.cursor()
    assert len(emitted) == len(set(emitted)) == len(server)
