"""training_job_logs_v1 against the simulator: 2 KiB ranges that cut characters lose none."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from log_helpers import FakeClock, Harness, expected_lines, joined, mixed_text
from modelarts_helpers import modelarts_context

from collector_plugin.auth import AkSkAuth
from collector_plugin.backoff import Backoff
from collector_plugin.simulator import ALL_QUIRKS, LogGenerator, Scenario, Simulator
from collector_plugin.sources.modelarts.client import ModelArtsClient
from collector_plugin.sources.modelarts.job_logs_v1 import (
    JobLogsV1Config,
    JobLogsV1Source,
    V1LogResponse,
    complete_prefix,
)
from collector_plugin.telemetry import Metrics

V1_LOG = "/v1/{project_id}/training-jobs/{job_id}/versions/{version_id}/log"
V1_FILE_NAMES = "/v1/{project_id}/training-jobs/{job_id}/versions/{version_id}/log/file-names"


def straddling(n: int, char: str) -> bytes:
    """Lines made of one multi-byte character: nearly every 2048-byte range ends inside one."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += (char * (i % 700 + 1) + ("\r\n" if i % 5 == 0 else "\n")).encode()
        i += 1
    return bytes(out)


@pytest.fixture
def make_sim() -> Iterator[Any]:
    started: list[Simulator] = []

    def make(scenario: Scenario, **kwargs: Any) -> Simulator:
        sim = Simulator(scenario, **kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


def make_source(
    sim: Simulator, *, clock: FakeClock | None = None, metrics: Metrics | None = None, **config: Any
) -> tuple[JobLogsV1Source, ModelArtsClient]:
    client = ModelArtsClient.connect(
        sim.url,
        sim.project_id,
        auth=AkSkAuth(sim.ak, sim.sk),
        retry=Backoff(initial=0.001, maximum=0.01, max_attempts=6),
        rate_limit=100_000,
        burst=100_000,
    )
    config.setdefault("jobs", [{"job_id": 7, "version_id": 1, "log_files": ["train.log"]}])
    ctx = modelarts_context(client, source="training_job_logs_v1", metrics=metrics, clock_ns=clock or FakeClock())
    return JobLogsV1Source(JobLogsV1Config.model_validate(config), ctx), client


@pytest.mark.parametrize("split", ["drop", "replace"])
@pytest.mark.parametrize("char", ["中", "é", "😀"])
async def test_characters_cut_at_every_range_edge_are_neither_lost_nor_mangled(
    make_sim: Any, split: str, char: str
) -> None:
    data = straddling(40_000, char)
    scenario = Scenario()
    scenario.add_v1_job(7, 1, {"train.log": data})
    sim = make_sim(scenario, v1_split=split)
    source, client = make_source(sim, start_at="beginning")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll(draining=True)
    assert joined(harness.records) == expected_lines(data)
    assert "\ufffd" not in "".join(joined(harness.records))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    split=st.sampled_from(["drop", "replace"]),
    quirks=st.sampled_from([frozenset(), ALL_QUIRKS]),
    growth=st.lists(st.integers(0, 6000), min_size=1, max_size=6),
    crashes=st.lists(st.sampled_from([None, 1, 2]), min_size=6, max_size=6),
)
async def test_every_line_once_in_order_while_the_log_grows(
    make_sim: Any, seed: int, split: str, quirks: frozenset[str], growth: list[int], crashes: list[int | None]
) -> None:
    scenario = Scenario()
    job = scenario.add_v1_job(7, 1, {"train.log": mixed_text(seed, 1500)})
    sim = make_sim(scenario, v1_split=split, quirks=quirks)
    source, client = make_source(sim, start_at="beginning", max_line_bytes=300)
    async with client:
        harness = Harness(source, (await source.targets())[0])
        for i, n in enumerate(growth):
            job.append("train.log", mixed_text(seed + i + 1, n // 3))
            await harness.poll(crash_after=crashes[i])
        await harness.poll(draining=True)
    data = job.file("train.log").data
    assert joined(harness.records) == expected_lines(data)
    uids = [r.uid for r in harness.records]
    assert len(uids) == len(set(uids))
    sim.stop()


async def test_injected_429_and_5xx_lose_and_repeat_nothing(make_sim: Any) -> None:
    data = LogGenerator(2).chunk(60_000)
    scenario = Scenario()
    scenario.add_v1_job(7, 1, {"train.log": data})
    sim = make_sim(scenario)
    for status in (429, 500, 503, 429, 502):
        sim.faults.add(r"/log$", status=status, retry_after=0 if status == 429 else None, times=1)
    source, client = make_source(sim, start_at="beginning")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
        sim.faults.add(r"/log$", status=500, times=2)
        await harness.poll(draining=True)
    assert joined(harness.records) == expected_lines(data)
    assert sim.count(V1_LOG, status=429) == 2 and sim.count(V1_LOG, status=500) == 3


async def test_catching_up_uses_full_ranges_and_idle_polls_one_request(make_sim: Any) -> None:
    data = b"0123456789abcde\n" * 4096  # 64 KiB: 32 full ranges
    scenario = Scenario()
    job = scenario.add_v1_job(7, 1, {"train.log": data})
    sim = make_sim(scenario)
    source, client = make_source(sim, start_at="beginning")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
        catch_up = sim.count(V1_LOG)
        sim.reset_requests()
        await harness.poll()
        idle = sim.count(V1_LOG)
        job.append("train.log", "small growth 中文\n")
        sim.reset_requests()
        await harness.poll()
        small = sim.count(V1_LOG)
    assert catch_up == 1 + 32  # the size, then 32 full ranges
    assert (idle, small) == (1, 1)
    assert [r.body for r in harness.records][-1] == "small growth 中文"
    assert sum(len(s.records) for s in harness.spans) == 4097


async def test_requests_stay_within_the_documented_limits(make_sim: Any) -> None:
    scenario = Scenario()
    scenario.add_v1_job(7, 1, {"train.log": mixed_text(4, 5000)})
    sim = make_sim(scenario)
    source, client = make_source(sim, start_at="beginning")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll(draining=True)
    for req in sim.requests:
        assert -2048 <= int(req.query["offset"]) <= 2048 and int(req.query["start_byte"]) >= -1
        assert req.status == 200


async def test_log_restarted_shorter_is_read_again_with_a_record_saying_so(make_sim: Any) -> None:
    scenario = Scenario()
    job = scenario.add_v1_job(7, 1, {"train.log": b"old 1\nold 2\n"})
    sim = make_sim(scenario)
    metrics = Metrics()
    source, client = make_source(sim, start_at="beginning", metrics=metrics)
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
        job.file("train.log").restart(b"new\n")
        await harness.poll()
    assert [(r.body, r.event_name) for r in harness.records][:2] == [("old 1", ""), ("old 2", "")]
    assert harness.records[2].event_name == "modelarts.log.restarted"
    assert harness.records[3].body == "new"
    assert json.loads(harness.cursor or "") == {
        "v": 1,
        "offset": 4,
        "continued": False,
        "epoch": 1,
        "before": b"new\n".hex(),
        "seen": [16, 3, 0, 1, 0],  # bytes read, records, gaps, restarts, read from
    }
    restarts = metrics.registry.get_sample_value(
        "modelarts_receiver_log_restarts_detected_total", {"source": "training_job_logs_v1"}
    )
    assert restarts == 1


async def test_log_restarted_and_grown_past_the_cursor_is_still_caught(make_sim: Any) -> None:
    scenario = Scenario()
    job = scenario.add_v1_job(7, 1, {"train.log": b"attempt 1 started\nattempt 1 failed\n"})
    sim = make_sim(scenario)
    source, client = make_source(sim, start_at="beginning")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
        new = b"attempt 2 started\nattempt 2 is healthy\nepoch 1 done\n"
        job.file("train.log").restart(new)
        await harness.poll()
        await harness.poll()
    bodies = [str(r.body) for r in harness.records if not r.event_name]
    assert bodies == ["attempt 1 started", "attempt 1 failed", *expected_lines(new)]
    assert [r.event_name for r in harness.records].count("modelarts.log.restarted") == 1


async def test_start_at_end_skips_history_and_resumes_from_checkpoint(make_sim: Any) -> None:
    scenario = Scenario()
    job = scenario.add_v1_job(7, 1, {"train.log": b"history\n" * 1000 + b"unfin"})
    sim = make_sim(scenario)
    source, client = make_source(sim)
    async with client:
        target = (await source.targets())[0]
        harness = Harness(source, target)
        await harness.poll()
        assert harness.records == []
        job.append("train.log", b"ished\n")
        await harness.poll()
        job.append("train.log", b"while down\n")
        resumed = source.open(target, harness.cursor)
        later = [r.body for s in [s async for s in resumed.poll()] for r in s.records]
    assert [r.body for r in harness.records] == ["unfinished"]
    assert later == ["while down"]


async def test_partial_line_is_flushed_after_flush_after(make_sim: Any) -> None:
    scenario = Scenario()
    job = scenario.add_v1_job(7, 1, {"train.log": "ready\nhalf 中".encode()})
    sim = make_sim(scenario)
    clock = FakeClock()
    source, client = make_source(sim, start_at="beginning", clock=clock, flush_after="2s")
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()
        clock.advance(1)
        await harness.poll()
        assert [r.body for r in harness.records] == ["ready"]
        clock.advance(1)
        await harness.poll()
        job.append("train.log", " rest\n")
        await harness.poll()
    assert [r.body for r in harness.records] == ["ready", "half 中", " rest"]
    assert harness.records[1].attributes["modelarts.log.partial"] is True
    assert harness.records[2].attributes["modelarts.log.continued"] is True


async def test_file_names_come_from_the_api_and_are_cached(make_sim: Any) -> None:
    scenario = Scenario()
    job = scenario.add_v1_job(7, 1, {"a.log": b"", "b.log": b""})
    sim = make_sim(scenario)
    clock = FakeClock()
    source, client = make_source(sim, clock=clock, jobs=[{"job_id": 7, "version_id": 1}], file_names_interval="60s")
    async with client:
        first = await source.targets()
        job.append("c.log", b"x\n")
        cached = await source.targets()
        clock.advance(61)
        fresh = await source.targets()
    assert [t.key for t in first] == ["training_job_logs_v1/7/1/a.log", "training_job_logs_v1/7/1/b.log"]
    assert cached == first
    assert [t.key for t in fresh][-1] == "training_job_logs_v1/7/1/c.log"
    assert sim.count(V1_FILE_NAMES) == 2


@pytest.mark.parametrize(
    ("body", "requested", "expected"),
    [
        ({"log": "ab中", "count": "5", "end_byte": "5"}, 2048, "ab中"),
        ({"log": "ab", "log_byte_count": 4}, 2048, "ab"),  # drop mode: a cut character left out
        ({"log": "ab\ufffd", "count": 4}, 2048, "ab"),  # replace mode: the stand-in is not kept
        ({"log": "ab\ufffd", "count": 5}, 5, "ab"),  # full range: the U+FFFD may be a cut character
        ({"log": None, "count": "0"}, 2048, ""),
    ],
)
def test_complete_prefix_keeps_only_characters_known_complete(
    body: dict[str, Any], requested: int, expected: str
) -> None:
    resp = V1LogResponse.model_validate(body)
    assert complete_prefix(resp, requested) == expected.encode()


def test_a_trailing_replacement_character_is_kept_at_the_end_of_an_ended_log() -> None:
    resp = V1LogResponse.model_validate({"log": "ab\ufffd", "count": 5})
    assert complete_prefix(resp, 2048, final=True) == "ab\ufffd".encode()


async def test_a_drained_v1_log_gives_one_complete_record(make_sim: Any) -> None:
    scenario = Scenario()
    data = mixed_text(5, 4000)
    scenario.add_v1_job(7, 1, {"train.log": data})
    sim = make_sim(scenario)
    metrics = Metrics()
    source, client = make_source(sim, start_at="beginning", metrics=metrics)
    async with client:
        harness = Harness(source, (await source.targets())[0])
        await harness.poll()  # v1 jobs never say they ended: a log read live, then no longer listed
        await harness.poll(draining=True)
        await harness.poll(draining=True)
    done = [r for r in harness.records if r.event_name == "modelarts.log.complete"]
    assert len(done) == 1 and done[0] is harness.records[-1]
    a = done[0].attributes
    assert (a["modelarts.log.complete"], a["modelarts.log.size"], a["modelarts.log.bytes_read"]) == (
        True,
        len(data),
        len(data),
    )
    assert a["modelarts.log.records"] == len([r for r in harness.records if not r.event_name])
    drained = metrics.registry.get_sample_value(
        "modelarts_receiver_logs_drained_total", {"source": "training_job_logs_v1", "complete": "true"}
    )
    assert drained == 1
