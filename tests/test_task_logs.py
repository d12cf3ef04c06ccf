"""training_task_logs against the simulator: every line exactly once, in order, whatever happens."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from log_helpers import FakeClock, Harness, expected_lines, joined, mixed_text
from modelarts_helpers import modelarts_context

from collector_plugin.auth import AkSkAuth
from collector_plugin.backoff import Backoff
from collector_plugin.errors import ResponseFormatError
from collector_plugin.simulator import LogGenerator, Scenario, Simulator, TaskLog
from collector_plugin.sources.modelarts.client import ModelArtsClient
from collector_plugin.sources.modelarts.task_logs import TaskLogsConfig, TaskLogsSource, TaskLogTarget, answer_window
from collector_plugin.telemetry import Metrics

PREVIEW = "/v2/{project_id}/training-jobs/{id}/tasks/{task}/logs/preview"
LINK = "/v2/{project_id}/training-jobs/{id}/tasks/{task}/logs/url"
OBS = "/obs/{bucket}/{object}"


@pytest.fixture
def scenario() -> Scenario:
    return Scenario()


@pytest.fixture
def make_sim(scenario: Scenario) -> Iterator[Any]:
    started: list[Simulator] = []

    def make(**kwargs: Any) -> Simulator:
        sim = Simulator(scenario, **kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


async def make_source(
    sim: Simulator,
    *,
    clock: FakeClock | None = None,
    metrics: Metrics | None = None,
    **config: Any,
) -> tuple[TaskLogsSource, ModelArtsClient]:
    client = ModelArtsClient.connect(
        sim.url,
        sim.project_id,
        auth=AkSkAuth(sim.ak, sim.sk),
        retry=Backoff(initial=0.001, maximum=0.01, max_attempts=6),
        rate_limit=10_000,
        burst=10_000,
    )
    config.setdefault("jobs", [{"id": "job-1"}])
    ctx = modelarts_context(client, source="training_task_logs", metrics=metrics, clock_ns=clock or FakeClock())
    return TaskLogsSource(TaskLogsConfig.model_validate(config), ctx), client


def add_log(scenario: Scenario, data: bytes = b"", *, job_id: str = "job-1", task: str = "worker-0") -> TaskLog:
    job = scenario.add_job(job_id, tasks=(task,))
    log = job.task(task)
    if data:
        log.append(data)
    return log


async def read_all(harness: Harness, polls: int = 3) -> None:
    for _ in range(polls):
        await harness.poll()
    await harness.poll(draining=True)


@pytest.mark.parametrize("first_draining", [True, False])
@pytest.mark.parametrize("preview_cap", [5 * 1024 * 1024, 4096, 7])
async def test_backlog_larger_than_the_preview_is_read_exactly_once(
    make_sim: Any, scenario: Scenario, preview_cap: int, first_draining: bool
) -> None:
    data = LogGenerator(3, long_line_prob=0.002, long_line_bytes=20_000).chunk(600_000)
    log = add_log(scenario, data)
    sim = make_sim(preview_cap=preview_cap)
    source, client = await make_source(sim, start_at="beginning", max_line_bytes=8192)
    async with client:
        (target,) = await source.targets()
        harness = Harness(source, target)
        await harness.poll(draining=first_draining)
        if first_draining:  # a drain reads through the preview: OBS only for what lies before it
            assert (sim.count(OBS) > 0) == (preview_cap < len(data))
        else:  # where reading starts is known: all from OBS, no preview fetched (or held)
            assert (sim.count(OBS), sim.count(PREVIEW)) == (1, 0)
        more = mixed_text(1, 5000)
        log.append(more)
        sim.reset_requests()
        await harness.poll()
        # Caught up on a log this large: the new bytes come from OBS, one request, no preview.
        assert (sim.count(OBS), sim.count(PREVIEW)) == (1, 0)
        await read_all(harness)
    assert joined(harness.records) == expected_lines(data + more)


async def test_obs_backlog_is_read_in_bounded_spans(make_sim: Any, scenario: Scenario) -> None:
    data = LogGenerator(5).chunk(3 * 1024 * 1024)
    add_log(scenario, data)
    sim = make_sim(preview_cap=4096)
    source, client = await make_source(sim, start_at="beginning")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll(draining=True)
    assert joined(harness.records) == expected_lines(data)
    assert max(span.nbytes for span in harness.spans) <= 1024 * 1024
    assert sum(span.nbytes for span in harness.spans) == len(data)
    assert sim.count(OBS, status=206) == 1  # one streamed range for the whole backlog


@pytest.mark.parametrize("seed", range(4))
async def test_growth_restarts_and_multibyte_splits_keep_every_line_once(
    make_sim: Any, scenario: Scenario, seed: int
) -> None:
    rnd = random.Random(seed)
    log = add_log(scenario, mixed_text(seed, 3000))
    sim = make_sim(preview_cap=rnd.choice([5, 64, 999, 100_000]))
    source, client = await make_source(sim, start_at="beginning", max_line_bytes=64)
    async with client:
        harness = Harness(source, (await source.targets())[0])
        for step in range(12):
            log.append(mixed_text(seed * 100 + step, rnd.randint(0, 400)))
            await harness.poll(crash_after=rnd.choice([None, 1, 2]))
        await harness.poll(draining=True)
    assert joined(harness.records) == expected_lines(log.data)
    uids = [r.uid for r in harness.records]
    assert len(set(uids)) == len(uids)


async def test_expired_links_are_renewed_and_reading_resumes_at_the_same_byte(
    make_sim: Any, scenario: Scenario
) -> None:
    now = [1_700_000_000.0]
    data = LogGenerator(7).chunk(1_500_000)
    log = add_log(scenario, data)
    sim = make_sim(preview_cap=1000, obs_ttl=60, clock=lambda: now[0])
    source, client = await make_source(sim, start_at="beginning")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()  # the backlog, through a link the reader keeps
        more = LogGenerator(8).chunk(400_000)
        log.append(more)
        now[0] += 120  # the kept link has expired
        await harness.poll(draining=True)
    assert sim.count(OBS, status=403) == 1
    assert sim.count(LINK) == 2
    assert joined(harness.records) == expected_lines(data + more)


async def test_injected_429_and_5xx_lose_and_repeat_nothing(make_sim: Any, scenario: Scenario) -> None:
    data = LogGenerator(11).chunk(200_000)
    log = add_log(scenario, data)
    sim = make_sim(preview_cap=3000)
    sim.faults.add(r"/logs/preview$", status=429, retry_after=0, times=2)
    sim.faults.add(r"/logs/url$", status=503, times=1)
    sim.faults.add(r"^/obs/", status=500, times=2)
    sim.faults.add(r"^/obs/", status=429, retry_after=0, times=1)
    source, client = await make_source(sim, start_at="beginning")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
        log.append(b"last line\n")
        sim.faults.add(r"/logs/preview$", status=502, times=2)
        await harness.poll(draining=True)
    assert joined(harness.records) == expected_lines(data + b"last line\n")
    assert sim.count(status=429) == 3 and sim.count(status=500) == 2 and sim.count(status=502) == 2


async def test_log_restarted_shorter_is_read_again_with_a_record_saying_so(make_sim: Any, scenario: Scenario) -> None:
    log = add_log(scenario, b"old one\nold two\nold partial")
    sim = make_sim()
    metrics = Metrics()
    source, client = await make_source(sim, start_at="beginning", metrics=metrics)
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
        log.restart(b"new one\n")
        await harness.poll()
        log.append(b"new two\n")
        await harness.poll(crash_after=5)
        await harness.poll()
    bodies = [(r.body, r.event_name) for r in harness.records]
    assert bodies[:3] == [("old one", ""), ("old two", ""), ("old partial", "")]
    assert bodies[3][1] == "modelarts.log.restarted"
    assert bodies[4:] == [("new one", ""), ("new two", "")]
    assert harness.records[3].attributes == {"modelarts.log.previous_size": 27, "modelarts.log.size": 8}
    assert harness.records[0].uid != harness.records[4].uid  # both at offset 0: distinct records
    restarts = metrics.registry.get_sample_value(
        "modelarts_receiver_log_restarts_detected_total", {"source": "training_task_logs"}
    )
    assert restarts == 1


async def test_log_restarted_and_grown_past_the_cursor_is_still_caught(make_sim: Any, scenario: Scenario) -> None:
    # A job that crash-loops at start: by the next poll its new log is already longer than the
    # old one, so the size cannot tell; the bytes before the position can.
    log = add_log(scenario, b"[INFO] starting attempt 1\n[ERROR] CUDA init failed\n")
    sim = make_sim()
    source, client = await make_source(sim, start_at="beginning")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
        new = b"[INFO] starting attempt 2\n[INFO] CUDA ready\n[INFO] epoch 1 loss=2.1\n"
        log.restart(new)
        await harness.poll()
        await harness.poll()
    bodies = [str(r.body) for r in harness.records if not r.event_name]
    assert bodies == ["[INFO] starting attempt 1", "[ERROR] CUDA init failed", *expected_lines(new)]
    assert [r.event_name for r in harness.records].count("modelarts.log.restarted") == 1


async def test_large_log_rewritten_while_tailed_through_obs_is_caught(make_sim: Any, scenario: Scenario) -> None:
    old = LogGenerator(21).chunk(300_000)  # caught up, it is tailed via OBS
    log = add_log(scenario, old)
    sim = make_sim()
    source, client = await make_source(sim, start_at="beginning")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
        new = LogGenerator(22).chunk(400_000)  # the restarted job's log is already longer
        log.restart(new)
        sim.reset_requests()
        await harness.poll()
        assert (sim.count(OBS), sim.count(PREVIEW)) == (1, 1)  # seen on the OBS tail read, then reread
        await harness.poll(draining=True)
    kinds = [r.event_name for r in harness.records]
    assert kinds.count("modelarts.log.restarted") == 1
    cut = kinds.index("modelarts.log.restarted")
    assert joined(harness.records[:cut]) == expected_lines(old)
    assert joined(harness.records[cut + 1 :]) == expected_lines(new)


async def test_resume_from_a_cursor_notices_a_log_replaced_by_a_longer_one(make_sim: Any, scenario: Scenario) -> None:
    # The receiver was down while the job restarted and wrote more than before: the committed
    # cursor carries the bytes before it, so the new log is still read from its start.
    log = add_log(scenario, b"attempt 1 line 1\nattempt 1 line 2\n")
    sim = make_sim()
    source, client = await make_source(sim, start_at="beginning")
    async with client:
        first = Harness(source, (await source.targets())[0])
        await first.poll()
        new = b"attempt 2 line 1\nattempt 2 line 2\nattempt 2 line 3\n"
        log.restart(new)
        second = Harness(source, (await source.targets())[0])
        second.reader = source.open(second.target, first.cursor)
        await second.poll()
    assert second.records[0].event_name == "modelarts.log.restarted"
    assert joined(second.records) == expected_lines(new)


async def test_resume_from_a_cursor_shorter_than_the_log_detects_the_restart(make_sim: Any, scenario: Scenario) -> None:
    add_log(scenario, b"short\n")
    sim = make_sim()
    source, client = await make_source(sim)
    async with client:
        target = (await source.targets())[0]
        reader = source.open(target, json.dumps({"offset": 500}))
        records = [r for span in [s async for s in reader.poll()] for r in span.records]
    assert [r.event_name for r in records] == ["modelarts.log.restarted", ""]
    assert records[1].body == "short"


async def test_start_at_end_skips_history_but_keeps_the_unfinished_line(make_sim: Any, scenario: Scenario) -> None:
    log = add_log(scenario, b"history 1\nhistory 2\nunfin")
    sim = make_sim()
    source, client = await make_source(sim)
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
        assert harness.records == [] and json.loads(harness.cursor or "")["offset"] == 20
        log.append(b"ished\nnew line\n")
        await harness.poll()
    assert [r.body for r in harness.records] == ["unfinished", "new line"]


async def test_start_at_end_checkpoint_resumes_from_the_checkpoint(make_sim: Any, scenario: Scenario) -> None:
    log = add_log(scenario, b"history\n")
    sim = make_sim()
    source, client = await make_source(sim)
    async with client:
        target = (await source.targets())[0]
        first = Harness(source, target)
        await first.poll()
        log.append(b"written while the receiver was down\n")
        second = source.open(target, first.cursor)
        records = [r for span in [s async for s in second.poll()] for r in span.records]
    assert [r.body for r in records] == ["written while the receiver was down"]


async def test_partial_line_waits_then_is_flushed_after_flush_after(make_sim: Any, scenario: Scenario) -> None:
    log = add_log(scenario, b"done\nwaiting")
    sim = make_sim()
    clock = FakeClock()
    source, client = await make_source(sim, start_at="beginning", flush_after="5s", clock=clock)
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
        clock.advance(4.9)
        await harness.poll()
        assert [r.body for r in harness.records] == ["done"]
        clock.advance(0.2)
        await harness.poll()
        assert [r.body for r in harness.records] == ["done", "waiting"]
        assert harness.records[-1].attributes["modelarts.log.partial"] is True
        log.append(" finished\nnext\n")
        await harness.poll()
    assert [r.body for r in harness.records] == ["done", "waiting", " finished", "next"]
    assert harness.records[2].attributes["modelarts.log.continued"] is True
    assert json.loads(harness.cursor or "")["offset"] == len(log.data)


async def test_growing_log_resets_the_flush_timer(make_sim: Any, scenario: Scenario) -> None:
    log = add_log(scenario, b"grow")
    sim = make_sim()
    clock = FakeClock()
    source, client = await make_source(sim, start_at="beginning", flush_after=5, clock=clock)
    async with client:
        harness = Harness(source, (await source.targets())[0])
        for _ in range(3):
            clock.advance(4)
            log.append(b"ing")
            await harness.poll()
    assert harness.records == []


async def test_tasks_come_from_the_job_details_and_an_ended_job_is_inactive(make_sim: Any, scenario: Scenario) -> None:
    job = scenario.add_job("job-9", name="train-resnet", tasks=("worker-0", "worker-1"))
    sim = make_sim()
    source, client = await make_source(sim, jobs=[{"id": "job-9"}, {"id": "job-x", "tasks": ["w"]}])
    async with client:
        targets = await source.targets()
        job.phase = "Completed"
        after = await source.targets()
    assert [(t.key, t.active) for t in targets] == [
        ("training_task_logs/job-9/worker-0", True),
        ("training_task_logs/job-9/worker-1", True),
        ("training_task_logs/job-x/w", True),
    ]
    assert [t.active for t in after] == [False, False, True]
    assert isinstance(targets[0], TaskLogTarget) and targets[0].job_name == "train-resnet"


async def test_discovery_finds_running_jobs_and_drains_ended_ones(make_sim: Any, scenario: Scenario) -> None:
    running = scenario.add_job("job-a", name="a", tasks=("worker-0",))
    scenario.add_job("job-b", name="b", tasks=("worker-0", "worker-1"), phase="Pending")
    scenario.add_job("job-c", name="c", tasks=("worker-0",), phase="Failed")
    sim = make_sim()
    source, client = await make_source(sim, jobs=[], discovery={"enabled": True})
    async with client:
        first = await source.targets()
        running.phase = "Completed"
        second = await source.targets()
        third = await source.targets()
    assert sorted((t.key, t.active) for t in first) == [
        ("training_task_logs/job-a/worker-0", True),
        ("training_task_logs/job-b/worker-0", True),
        ("training_task_logs/job-b/worker-1", True),
    ]
    assert ("training_task_logs/job-a/worker-0", False) in [(t.key, t.active) for t in second]
    assert "training_task_logs/job-a/worker-0" not in [t.key for t in third]


async def test_old_servers_preview_field_context_is_understood(make_sim: Any, scenario: Scenario) -> None:
    add_log(scenario, "第一行\n第二行\n".encode())
    sim = make_sim(quirks={"preview_context"})
    source, client = await make_source(sim, start_at="beginning")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll(draining=True)  # a drain reads the preview
    assert [r.body for r in harness.records] == ["第一行", "第二行"]
    assert sim.count(OBS) == 0


async def test_invalid_utf8_is_read_byte_exact_through_obs(make_sim: Any, scenario: Scenario) -> None:
    data = b"ok\n\xff\xfe bad bytes\nmore \xe4\xb8\n" * 50
    add_log(scenario, data)
    sim = make_sim()
    source, client = await make_source(sim, start_at="beginning")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll(draining=True)
    assert joined(harness.records) == expected_lines(data)
    offsets = [r.attributes["modelarts.log.offset"] for r in harness.records if not r.event_name]
    assert offsets[:4] == [0, 3, 16, 24]


async def test_offsets_and_uids_are_stable_across_replays(make_sim: Any, scenario: Scenario) -> None:
    add_log(scenario, mixed_text(3, 2000))
    sim = make_sim(preview_cap=100)
    source, client = await make_source(sim, start_at="beginning")
    async with client:
        target = (await source.targets())[0]
        once = Harness(source, target)
        await once.poll(draining=True)
        again = Harness(source, target)
        await again.poll(draining=True)
    assert [(r.uid, r.attributes.get("modelarts.log.offset")) for r in once.records] == [
        (r.uid, r.attributes.get("modelarts.log.offset")) for r in again.records
    ]


async def test_spans_report_bytes_and_the_reader_its_lag(make_sim: Any, scenario: Scenario) -> None:
    """What the scheduler counts per source and target (see test_scheduler) comes from here."""
    data = b"one\ntwo\nthree\n"
    add_log(scenario, data)
    sim = make_sim()
    source, client = await make_source(sim, start_at="beginning")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
    assert sum(span.nbytes for span in harness.spans) == len(data)
    assert len(harness.records) == 3
    assert harness.reader.status.lag_bytes == 0


async def test_the_obs_link_never_reaches_logs_errors_or_records(
    make_sim: Any, scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    add_log(scenario, b"x\n" * 5000)
    sim = make_sim(preview_cap=10)
    sim.faults.add(r"^/obs/", status=403, times=None)
    source, client = await make_source(sim, start_at="beginning")
    caplog.set_level(logging.DEBUG)
    async with client:
        harness = Harness(source, (await source.targets())[0])
        with pytest.raises(Exception) as info:
            await harness.poll()
    # httpx's own request log is redacted by collector_plugin.logs; ours must not need that.
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("collector_plugin")]
    texts = [str(info.value), repr(info.value), *ours, *(str(r.body) for r in harness.records)]
    for text in texts:
        assert "Signature" not in text and "AWSAccessKeyId" not in text and "/obs/" not in text


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (206, {"Content-Range": "bytes 10-19/100"}, b"0123456789", b"0123456789"),
        (206, {"Content-Range": "bytes 7-19/100"}, b"xyz0123456789", b"0123456789"),  # earlier start: skipped
        (200, {}, bytes(range(10)) + b"0123456789abc", b"0123456789"),  # Range ignored: whole object
        (416, {"Content-Range": "bytes */5"}, b"<Error/>", b""),
    ],
)
def test_obs_answers_are_cut_to_the_requested_bytes(
    status: int, headers: dict[str, str], body: bytes, expected: bytes
) -> None:
    skip, size = answer_window(status, headers.get("Content-Range", ""), 10)
    assert (b"" if skip is None else body[skip:][:10]) == expected
    assert size == (None if status == 200 else int(headers["Content-Range"].rsplit("/", 1)[1]))


def test_an_obs_range_starting_after_the_requested_byte_is_refused() -> None:
    with pytest.raises(ResponseFormatError):
        answer_window(206, "bytes 12-19/100", 10)


async def test_obs_ranges_that_split_characters_lose_none(make_sim: Any, scenario: Scenario) -> None:
    data = ("中" * 1000 + "é\n").encode() * 800  # 2.4 MB: the 1 MiB range edges fall inside characters
    add_log(scenario, data)
    sim = make_sim(preview_cap=1000)
    source, client = await make_source(sim, start_at="beginning", max_line_bytes=1000)
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll(draining=True)
    edges = list(itertools.accumulate(span.nbytes for span in harness.spans))[:-1]
    assert any(data[edge] & 0xC0 == 0x80 for edge in edges)
    assert joined(harness.records) == expected_lines(data)
    assert "\ufffd" not in "".join(str(r.body) for r in harness.records)


@pytest.mark.parametrize("draining", [False, True])
async def test_bytes_the_obs_object_never_holds_become_a_gap_record(
    make_sim: Any, scenario: Scenario, draining: bool
) -> None:
    data = b"".join(b"line %04d\n" % i for i in range(1000))  # 10 bytes a line
    add_log(scenario, data)
    sim = make_sim(preview_cap=1000)
    sim.faults.add(r"^/obs/", status=416, times=None)
    metrics = Metrics()
    source, client = await make_source(sim, start_at="beginning", metrics=metrics)
    async with client:
        harness = Harness(source, (await source.targets())[0])
        for _ in range(1 if draining else 2):
            await harness.poll(draining=draining)
            assert harness.records == [] or draining
        if not draining:
            await harness.poll()
    gap = harness.records[0]
    assert gap.event_name == "modelarts.log.gap"
    assert (gap.attributes["modelarts.log.gap.start"], gap.attributes["modelarts.log.gap.end"]) == (0, 9000)
    assert joined(harness.records[1:]) == expected_lines(data[9000:])
    assert (
        metrics.registry.get_sample_value("modelarts_receiver_gaps_detected_total", {"source": "training_task_logs"})
        == 1
    )


COMPLETE = "modelarts.log.complete"


def ended(target: TaskLogTarget) -> TaskLogTarget:
    return dataclasses.replace(target, active=False)


def drained_counts(metrics: Metrics, complete: bool) -> float | None:
    return metrics.registry.get_sample_value(
        "modelarts_receiver_logs_drained_total", {"source": "training_task_logs", "complete": str(complete).lower()}
    )


@pytest.mark.parametrize("preview_cap", [5 * 1024 * 1024, 300])
async def test_a_drained_log_gives_one_complete_record_with_what_was_read(
    make_sim: Any, scenario: Scenario, preview_cap: int
) -> None:
    data = mixed_text(11, 3000) + b"no newline at the end"
    log = add_log(scenario, data)
    sim = make_sim(preview_cap=preview_cap)
    metrics = Metrics()
    source, client = await make_source(sim, start_at="beginning", metrics=metrics)
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
        more = b"last words\n"
        log.append(more)
        await harness.poll(draining=True)
        await harness.poll(draining=True)  # drained again by the same reader: said once
    (done,) = [r for r in harness.records if r.event_name == COMPLETE]
    lines = [r for r in harness.records if not r.event_name]
    assert done is harness.records[-1]
    a = done.attributes
    size = len(data + more)
    assert a[COMPLETE] is True and (done.severity_number, done.severity_text) == (9, "INFO")
    assert (a["modelarts.log.size"], a["modelarts.log.position"], a["modelarts.log.bytes_read"]) == (size, size, size)
    assert (a["modelarts.log.records"], a["modelarts.log.gaps"], a["modelarts.log.restarts"]) == (len(lines), 0, 0)
    assert a["modelarts.log.read_from"] == 0
    assert (drained_counts(metrics, True), drained_counts(metrics, False)) == (1, 0)


async def test_a_log_with_a_gap_is_drained_incomplete(make_sim: Any, scenario: Scenario) -> None:
    data = b"".join(b"line %04d\n" % i for i in range(1000))
    add_log(scenario, data)
    sim = make_sim(preview_cap=1000)
    sim.faults.add(r"^/obs/", status=416, times=None)
    metrics = Metrics()
    source, client = await make_source(sim, start_at="beginning", metrics=metrics)
    async with client:
        harness = Harness(source, ended((await source.targets())[0]))
        await harness.poll(draining=True)
    done = harness.records[-1]
    assert done.event_name == COMPLETE
    assert done.attributes[COMPLETE] is False and done.severity_text == "WARN"
    assert (done.attributes["modelarts.log.gaps"], done.attributes["modelarts.log.bytes_read"]) == (1, 1000)
    assert done.attributes["modelarts.log.position"] == done.attributes["modelarts.log.size"] == len(data)
    assert (drained_counts(metrics, True), drained_counts(metrics, False)) == (0, 1)


async def test_start_at_end_counts_only_what_was_read_and_is_complete(make_sim: Any, scenario: Scenario) -> None:
    log = add_log(scenario, b"old line\n" * 10)
    sim = make_sim()
    source, client = await make_source(sim)
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
        log.append(b"new\n")
        await harness.poll(draining=True)
    done = harness.records[-1]
    assert (done.attributes["modelarts.log.read_from"], done.attributes["modelarts.log.bytes_read"]) == (90, 4)
    assert done.attributes[COMPLETE] is True and done.attributes["modelarts.log.records"] == 1


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=3000), cut=st.integers(0, 3000), crash=st.integers(1, 6))
async def test_a_drain_replayed_from_a_cursor_gives_the_same_complete_record(data: bytes, cut: int, crash: int) -> None:
    """Counts travel in the cursor and the time in the journal: a replay after a crash is identical."""
    scenario = Scenario()
    log = add_log(scenario, data[:cut])
    clock = FakeClock()
    sim = Simulator(scenario, preview_cap=500).start()
    source, client = await make_source(sim, start_at="beginning", clock=clock)
    try:
        await _drain_twice(source, client, log, data[cut:], clock, crash)
    finally:
        sim.stop()


async def _drain_twice(
    source: TaskLogsSource, client: ModelArtsClient, log: TaskLog, more: bytes, clock: FakeClock, crash: int
) -> None:
    async with client:
        target = ended((await source.targets())[0])
        first = Harness(source, target)
        await first.poll()
        log.append(more)
        cursor = first.cursor
        clock.advance(5)
        await first.poll(draining=True)
        clock.advance(60)  # a replay happens later: nothing in the record may show it
        replay = Harness(source, target)
        replay.reader = source.open(target, cursor)
        await replay.poll(draining=True, crash_after=crash)
        await replay.poll(draining=True)
    (once,) = [r for r in first.records if r.event_name == COMPLETE]
    again = [r for r in replay.records if r.event_name == COMPLETE]
    assert again and all(r == once for r in again)
    assert once.attributes["modelarts.log.bytes_read"] == once.attributes["modelarts.log.size"] == len(log.data)


async def test_reading_a_running_jobs_log_to_its_end_at_once_is_no_drain(make_sim: Any, scenario: Scenario) -> None:
    """``tail`` reads a running job's log with draining=True: no completeness record then."""
    add_log(scenario, b"one\ntwo\n")
    sim = make_sim()
    source, client = await make_source(sim, start_at="beginning")
    async with client:
        target = (await source.targets())[0]
        assert target.active
        once = Harness(source, target)
        await once.poll(draining=True)
        drained = Harness(source, ended(target))
        await drained.poll(draining=True)
    assert [r.event_name for r in once.records] == ["", ""]
    assert [r.event_name for r in drained.records] == ["", "", COMPLETE]
