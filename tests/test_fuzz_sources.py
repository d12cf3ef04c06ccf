"""Bad input, fuzzed: every source meets answers the API never promised and must not crash.

The sources read through a real :class:`ModelArtsClient` whose transport is an
``httpx.MockTransport``. "Never a crash" means a poll either yields spans or raises a
:class:`ReceiverError` subclass (the scheduler then backs off and reopens the target at its last
cursor); "never a silent skip" means that once the API answers sanely again, every line arrives
exactly once, and a log that got shorter is announced by a restart record.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelarts_helpers import modelarts_context

from collector_plugin.backoff import Backoff
from collector_plugin.budget import Budget, Tuning
from collector_plugin.errors import ReceiverError
from collector_plugin.records import Record
from collector_plugin.source import SourceContext
from collector_plugin.sources.modelarts.client import ModelArtsClient
from collector_plugin.sources.modelarts.events.source import EventsConfig, EventsSource, JobTarget
from collector_plugin.sources.modelarts.job_logs_v1 import JobLogsV1Config, JobLogsV1Source, V1LogTarget
from collector_plugin.sources.modelarts.service_updates import ServiceTarget, ServiceUpdatesConfig, ServiceUpdatesSource
from collector_plugin.sources.modelarts.task_logs import TaskLogsConfig, TaskLogsSource, TaskLogTarget
from collector_plugin.telemetry import Metrics

PROJECT = "fuzzproject"
JOB = "fuzz-job"
TASK = "worker-0"
RESTARTED = "modelarts.log.restarted"
GAP = "modelarts.log.gap"
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Handler = Callable[[httpx.Request], httpx.Response]

# --- strategies ----------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
sizes = st.one_of(
    st.integers(min_value=-5, max_value=300),
    st.integers(min_value=2**31, max_value=2**62),
    st.sampled_from(["12", "-1", "", "1e3", "abc"]),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)


def body_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


raw_bodies = st.one_of(
    json_values.map(body_bytes),
    st.binary(max_size=64),
    st.just(b"<html><body>502 Bad Gateway</body></html>"),
    st.just(b'{"content": "cut off'),
)
statuses = st.sampled_from([200, 200, 200, 201, 204, 400, 404, 429, 500, 503])


# --- harness -------------------------------------------------------------------------------------


def make_client(handler: Handler) -> ModelArtsClient:
    client = ModelArtsClient.connect(
        "https://modelarts.fuzz.example",
        PROJECT,
        transport=httpx.MockTransport(handler),
        retry=Backoff(initial=0.001, maximum=0.001, max_attempts=1),
        rate_limit=1e6,
        burst=1_000_000,
    )
    # A 429 is flow control: the budget pauses (up to a second per refusal in a row) and resends
    # before the poll gives up. Same path, millisecond pauses: a fuzzed 429 costs ~8 s otherwise.
    client.api.budget = Budget(1e6, 1_000_000, metrics=client.api.metrics, tuning=Tuning(max_pause=0.001))
    return client


@dataclass
class Drive:
    """Polls one target the way the scheduler does: on a failure, reopen at the last cursor."""

    open_reader: Callable[[str | None], Any]
    cursor: str | None = None
    records: list[Record] = field(default_factory=list)
    errors: list[ReceiverError] = field(default_factory=list)
    reader: Any = None

    async def poll(self, draining: bool = False) -> None:
        if self.reader is None:
            self.reader = self.open_reader(self.cursor)
        try:
            async for span in self.reader.poll(draining=draining):
                self.records.extend(span.records)
                if span.cursor is not None:
                    self.cursor = span.cursor
        except ReceiverError as exc:
            self.errors.append(exc)
            self.reader = None


def context(client: ModelArtsClient) -> SourceContext:
    return modelarts_context(client, region="fuzz-1", metrics=Metrics())


def task_source(client: ModelArtsClient, **config: Any) -> TaskLogsSource:
    cfg = TaskLogsConfig(start_at="beginning", jobs=[{"id": JOB, "tasks": [TASK]}], **config)
    return TaskLogsSource(cfg, context(client))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- any answer: an error or spans, never a crash --------------------------------------------------


@FUZZ
@given(status=statuses, body=raw_bodies)
def test_task_log_preview_garbage_is_an_error_never_a_crash(status: int, body: bytes) -> None:
    async def main() -> Drive:
        client = make_client(lambda request: httpx.Response(status, content=body))
        drive = Drive(lambda cursor: task_source(client).open(TaskLogTarget(JOB, TASK), cursor))
        await drive.poll()
        await client.aclose()
        return drive

    drive = run(main())
    assert drive.errors or drive.cursor is not None


@FUZZ
@given(content=st.one_of(st.text(max_size=300), json_values), current=sizes, full=sizes)
def test_task_log_preview_fields_of_any_type_or_size(content: Any, current: Any, full: Any) -> None:
    answer = {"content": content, "current_size": current, "full_size": full}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/logs/url"):
            return httpx.Response(200, json={"obs_url": "https://obs.fuzz.example/b/k?Signature=x"})
        if request.url.host == "obs.fuzz.example":
            return httpx.Response(416)
        return httpx.Response(200, json=answer)

    async def main() -> Drive:
        client = make_client(handler)
        drive = Drive(lambda cursor: task_source(client).open(TaskLogTarget(JOB, TASK), cursor))
        await drive.poll()
        await client.aclose()
        return drive

    drive = run(main())
    if not drive.errors and isinstance(full, int) and full >= 0:
        # Whatever was read lies within the log the server claims to have.
        offsets = [
            r.attributes["modelarts.log.offset"] for r in drive.records if "modelarts.log.offset" in r.attributes
        ]
        assert all(0 <= o < max(full, 1) for o in offsets)


@FUZZ
@given(status=statuses, body=raw_bodies)
def test_events_garbage_is_an_error_never_a_crash(status: int, body: bytes) -> None:
    async def main() -> Drive:
        client = make_client(lambda request: httpx.Response(status, content=body))
        source = EventsSource(EventsConfig(jobs=[{"id": JOB}]), context(client))
        drive = Drive(lambda cursor: source.open(JobTarget(JOB), cursor))
        await drive.poll()
        await client.aclose()
        return drive

    run(main())


@FUZZ
@given(
    events=st.lists(st.dictionaries(st.sampled_from(["time", "level", "message", "source"]), json_values), max_size=5)
)
def test_event_items_with_wrong_types_or_missing_fields(events: list[dict[str, Any]]) -> None:
    async def main() -> Drive:
        client = make_client(lambda request: httpx.Response(200, json={"total": len(events), "events": events}))
        source = EventsSource(EventsConfig(jobs=[{"id": JOB}]), context(client))
        drive = Drive(lambda cursor: source.open(JobTarget(JOB), cursor))
        await drive.poll()
        await client.aclose()
        return drive

    drive = run(main())
    # Items without a usable time cannot be placed: the page is refused, not half-read.
    assert drive.errors or len(drive.records) <= len(events)


@FUZZ
@given(status=statuses, body=raw_bodies)
def test_service_history_garbage_is_an_error_never_a_crash(status: int, body: bytes) -> None:
    async def main() -> Drive:
        client = make_client(lambda request: httpx.Response(status, content=body))
        source = ServiceUpdatesSource(ServiceUpdatesConfig(services=[{"id": "svc"}]), context(client))
        drive = Drive(lambda cursor: source.open(ServiceTarget("svc"), cursor))
        await drive.poll()
        await client.aclose()
        return drive

    run(main())


@FUZZ
@given(
    logs=st.lists(
        st.dictionaries(
            st.sampled_from(["update_time", "result", "config", "success_num", "result_detail"]), json_values
        ),
        max_size=4,
    )
)
def test_service_updates_with_wrong_types(logs: list[dict[str, Any]]) -> None:
    async def main() -> Drive:
        client = make_client(lambda request: httpx.Response(200, json={"service_name": "s", "logs": logs}))
        source = ServiceUpdatesSource(ServiceUpdatesConfig(services=[{"id": "svc"}]), context(client))
        drive = Drive(lambda cursor: source.open(ServiceTarget("svc"), cursor))
        await drive.poll()
        await client.aclose()
        return drive

    drive = run(main())
    assert drive.errors or len(drive.records) <= len(logs)


@FUZZ
@given(
    log=st.one_of(st.text(max_size=200), json_values),
    count=sizes,
    end_byte=sizes,
    is_success=st.one_of(st.booleans(), json_values),
)
def test_v1_answers_of_any_shape(log: Any, count: Any, end_byte: Any, is_success: Any) -> None:
    answer = {"is_success": is_success, "log": log, "log_byte_count": count, "end_byte": end_byte}

    async def main() -> Drive:
        client = make_client(lambda request: httpx.Response(200, json=answer))
        source = JobLogsV1Source(
            JobLogsV1Config(start_at="beginning", jobs=[{"job_id": 1, "version_id": 2, "log_files": ["a.log"]}]),
            context(client),
        )
        drive = Drive(lambda cursor: source.open(V1LogTarget(1, 2, "a.log"), cursor))
        for _ in range(2):
            await drive.poll()
        await client.aclose()
        return drive

    run(main())


# --- logs that grow and shrink: every line once, each restart announced ---------------------------

line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30)
chunks = st.lists(line_text, min_size=1, max_size=6).map(lambda ls: "".join(f"{x}\n" for x in ls).encode())


@dataclass
class FakeLog:
    """A task log behind the preview API (and a Range-capable OBS object)."""

    data: bytes = b""
    cap: int = 1 << 30
    obs_mode: str = "206"

    def preview(self) -> httpx.Response:
        start = max(0, len(self.data) - self.cap)
        raw = self.data[start:]
        while raw and (raw[0] & 0xC0) == 0x80:
            raw = raw[1:]
        return httpx.Response(
            200, json={"content": raw.decode(), "current_size": len(raw), "full_size": len(self.data)}
        )

    def obs(self, request: httpx.Request) -> httpx.Response:
        first, _, last = request.headers["range"].removeprefix("bytes=").partition("-")
        a, b = int(first), min(int(last) if last else len(self.data) - 1, len(self.data) - 1)
        mode = self.obs_mode
        if mode == "403":
            self.obs_mode = "206"
            return httpx.Response(403, content=b"<Error><Code>AccessDenied</Code></Error>")
        if a >= len(self.data) or mode == "416":
            return httpx.Response(416, headers={"Content-Range": f"bytes */{len(self.data)}"})
        if mode == "200":  # the whole object, no Content-Range: the range was ignored
            return httpx.Response(200, content=self.data)
        if mode == "206-bare":
            return httpx.Response(206, content=self.data[a : b + 1])
        if mode == "206-later":  # a range that starts after the one asked for
            return httpx.Response(
                206, content=self.data[a + 1 : b + 1], headers={"Content-Range": f"bytes {a + 1}-{b}/{len(self.data)}"}
            )
        if mode == "short":
            b = min(b, a + 7)
        return httpx.Response(
            206, content=self.data[a : b + 1], headers={"Content-Range": f"bytes {a}-{b}/{len(self.data)}"}
        )

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "obs.fuzz.example":
            return self.obs(request)
        if request.url.path.endswith("/logs/url"):
            return httpx.Response(200, json={"obs_url": "https://obs.fuzz.example/bucket/key?Signature=s3cr3t"})
        return self.preview()


def line_records(records: list[Record]) -> list[list[tuple[int, str]]]:
    """Records split into epochs at each restart notice: (offset, body) of each line."""
    epochs: list[list[tuple[int, str]]] = [[]]
    for record in records:
        if record.event_name == RESTARTED:
            epochs.append([])
        elif "modelarts.log.offset" in record.attributes:
            epochs[-1].append((int(record.attributes["modelarts.log.offset"]), str(record.body)))
    return epochs


def lines_of(data: bytes) -> list[tuple[int, str]]:
    out, pos = [], 0
    for raw in data.split(b"\n")[:-1]:
        out.append((pos, raw.decode("utf-8", "replace")))
        pos += len(raw) + 1
    return out


@FUZZ
@given(
    steps=st.lists(st.tuples(st.sampled_from(["grow", "grow", "restart"]), chunks), min_size=1, max_size=8),
    cap=st.sampled_from([1 << 30, 64, 7]),
)
def test_growing_and_shrinking_logs_lose_nothing(steps: list[tuple[str, bytes]], cap: int) -> None:
    """Polled after every change; the preview may show only the last ``cap`` bytes (OBS reads the rest)."""
    log = FakeLog(cap=cap)
    expected: list[list[tuple[int, str]]] = [[]]

    async def main() -> Drive:
        client = make_client(log.handler)
        # Bytes in, the same text out: escapes are kept here (stripping has its own properties in test_lines).
        drive = Drive(lambda cursor: task_source(client, ansi="keep").open(TaskLogTarget(JOB, TASK), cursor))
        for op, data in steps:
            if op == "restart" and 0 < len(data) < len(log.data):
                expected[-1] = lines_of(log.data)
                expected.append([])
                log.data = data
            else:
                log.data += data
            await drive.poll()
        await drive.poll()
        await client.aclose()
        return drive

    drive = run(main())
    expected[-1] = lines_of(log.data)
    assert not drive.errors, drive.errors
    assert line_records(drive.records) == expected


@FUZZ
@given(
    backlog=st.lists(chunks, min_size=1, max_size=6).map(b"".join),
    modes=st.lists(
        st.sampled_from(["206", "200", "206-bare", "206-later", "short", "403", "416"]), min_size=1, max_size=4
    ),
)
def test_odd_obs_answers_are_errors_or_exact_reads(backlog: bytes, modes: list[str]) -> None:
    """OBS answering 403, 416, 200 without Content-Range, a later range or a short body: the
    receiver retries, reports, or (an object that keeps lacking bytes the preview is past) records
    a gap; once OBS behaves, every byte was delivered exactly once or lies inside a gap record."""
    log = FakeLog(data=backlog, cap=5)

    async def main() -> Drive:
        client = make_client(log.handler)
        # Exact reads: escapes are kept (stripping has its own properties in test_lines).
        drive = Drive(lambda cursor: task_source(client, ansi="keep").open(TaskLogTarget(JOB, TASK), cursor))
        for mode in modes:
            log.obs_mode = mode
            await drive.poll()
        log.obs_mode = "206"
        for _ in range(len(backlog) // 8 + 3):
            await drive.poll()
        await client.aclose()
        return drive

    drive = run(main())
    gaps = [
        (int(r.attributes["modelarts.log.gap.start"]), int(r.attributes["modelarts.log.gap.end"]))
        for r in drive.records
        if r.event_name == GAP
    ]
    if not gaps:
        assert line_records(drive.records) == [lines_of(backlog)]
        return
    assert "416" in modes, "a gap was recorded though OBS held every byte"
    covered = bytearray(len(backlog))
    for start, end in gaps:
        covered[start:end] = b"\x01" * (end - start)
    emitted = line_records(drive.records)
    assert len(emitted) == 1
    for offset, body in emitted[0]:
        stop = min(len(backlog), offset + len(body.encode()) + 1)
        assert backlog[offset:stop].rstrip(b"\n") == body.encode(), "a line was altered"
        assert not any(covered[offset:stop]), "a byte was delivered twice (or inside a gap)"
        covered[offset:stop] = b"\x01" * (stop - offset)
    assert all(covered), "bytes were skipped without a gap record"
