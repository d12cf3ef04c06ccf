"""``service_update_logs``: one record per state an update reaches, envs never exported."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modelarts_helpers import modelarts_context

from collector_plugin.backoff import Backoff
from collector_plugin.logs import REDACTED
from collector_plugin.records import Record, Span
from collector_plugin.simulator import Simulator, edge_detail
from collector_plugin.source import BadCursor
from collector_plugin.sources.modelarts.client import SERVICE_INFERENCE, ModelArtsClient
from collector_plugin.sources.modelarts.records import EVENT_SERVICE_UPDATE
from collector_plugin.sources.modelarts.service_updates import (
    ServiceTarget,
    ServiceUpdatesConfig,
    ServiceUpdatesSource,
    UpdateTracker,
    _Update,
)
from collector_plugin.telemetry import Metrics

FAST_RETRY = Backoff(initial=0.001, maximum=0.01, max_attempts=6)
SECRETS = ("s3cr3t", "tok-")


@pytest.fixture(params=[True, False], ids=["strings", "numbers"])
def sim(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    simulator = Simulator(require_auth=False, quirks={"service_strings"} if request.param else set())
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[ModelArtsClient]:
    async with ModelArtsClient.connect(sim.url, sim.project_id, retry=FAST_RETRY, rate_limit=10_000, burst=10_000) as c:
        yield c


def source_for(client: ModelArtsClient, metrics: Metrics | None = None, **config: Any) -> ServiceUpdatesSource:
    context = modelarts_context(client, source="service_update_logs", metrics=metrics)
    return ServiceUpdatesSource(ServiceUpdatesConfig.model_validate(config), context)


async def poll(reader: Any) -> list[Span]:
    return [span async for span in reader.poll()]


def records(spans: list[Span]) -> list[Record]:
    return [r for s in spans for r in s.records]


def assert_no_secret(recs: list[Record]) -> None:
    for r in recs:
        text = json.dumps({"body": r.body, "attrs": r.all_attributes()}, default=str)
        assert not any(s in text for s in SECRETS), text


async def test_running_then_success_gives_exactly_two_records(sim: Simulator, client: ModelArtsClient) -> None:
    svc = sim.scenario.add_service(name="ocr")
    metrics = Metrics()
    source = source_for(client, metrics, services=[{"id": svc.id}])
    (target,) = await source.targets()
    reader = source.open(target, None)

    assert records(await poll(reader)) == []
    assert await poll(reader) == []  # nothing changed: no span at all
    update = svc.start_update()
    first = records(await poll(reader))
    assert [r.severity_text for r in first] == ["RUNNING"]
    assert records(await poll(reader)) == []
    assert await poll(reader) == []  # unchanged: no span at all
    update.finish("SUCCESS")
    second = records(await poll(reader))
    assert [(r.severity_text, r.severity_number) for r in second] == [("SUCCESS", 9)]
    assert await poll(reader) == []

    both = first + second
    assert first[0].uid != second[0].uid
    assert all(r.time_ns == update.update_time * 1_000_000 for r in both)
    assert all(
        r.event_name == EVENT_SERVICE_UPDATE and r.resource.as_dict()["service.name"] == SERVICE_INFERENCE for r in both
    )
    assert both[0].shared.as_dict() == {"modelarts.service.id": svc.id, "modelarts.service.name": "ocr"}
    config = both[0].attributes["modelarts.service.config"]
    assert isinstance(config, list) and isinstance(config[0], dict)
    assert config[0]["weight"] == 100  # a string "100" on servers with the quirk
    assert set(config[0]["envs"]) == {"MODEL_LOG_LEVEL", "DB_PASSWORD", "API_TOKEN"}
    assert set(config[0]["envs"].values()) == {REDACTED}
    assert_no_secret(both)


async def test_fail_and_edge_fields(sim: Simulator, client: ModelArtsClient) -> None:
    svc = sim.scenario.add_service(name="edge-a", infer_type="edge")
    update = svc.start_update()
    update.finish("FAIL", result_detail=edge_detail(3, failed=1))
    reader = source_for(client).open(ServiceTarget(svc.id), None)
    (rec,) = records(await poll(reader))
    assert (rec.severity_text, rec.severity_number) == ("FAIL", 17)
    assert rec.attributes["modelarts.service.update.success_num"] == 2
    assert rec.attributes["modelarts.service.update.failed_num"] == 1
    assert len(rec.attributes["modelarts.service.update.result_detail"]) == 3  # type: ignore[arg-type]
    assert "[nodes ok 2, failed 1]" in str(rec.body)
    assert_no_secret([rec])


async def test_history_and_restart_from_cursor(sim: Simulator, client: ModelArtsClient) -> None:
    svc = sim.scenario.add_service(name="hist")
    for result in ("SUCCESS", "FAIL", "SUCCESS"):
        svc.start_update().finish(result)
    pending = svc.start_update()
    source = source_for(client)
    spans = await poll(source.open(ServiceTarget(svc.id), None))
    assert [r.severity_text for r in records(spans)] == ["SUCCESS", "FAIL", "SUCCESS", "RUNNING"]
    assert_no_secret(records(spans))

    resumed = source.open(ServiceTarget(svc.id), spans[-1].cursor)
    assert await poll(resumed) == []
    pending.finish("SUCCESS")
    assert [r.severity_text for r in records(await poll(resumed))] == ["SUCCESS"]


async def test_start_at_end_marks_history_as_seen(sim: Simulator, client: ModelArtsClient) -> None:
    svc = sim.scenario.add_service(name="late")
    svc.start_update().finish("SUCCESS")
    running = svc.start_update()
    reader = source_for(client, start_at="end").open(ServiceTarget(svc.id), None)
    first = await poll(reader)
    assert records(first) == [] and first[0].cursor is not None
    running.finish("FAIL")
    svc.start_update()
    assert [r.severity_text for r in records(await poll(reader))] == ["FAIL", "RUNNING"]


async def test_updates_sharing_a_time_are_told_apart(sim: Simulator, client: ModelArtsClient) -> None:
    svc = sim.scenario.add_service(name="same")
    a = svc.start_update(time_ms=1_700_000_000_000)
    a.finish("SUCCESS")
    with svc._lock:  # two updates at one millisecond: the simulator avoids it, real servers may not
        b = svc.start_update(time_ms=1_700_000_000_000)
        b.update_time = a.update_time
    reader = source_for(client).open(ServiceTarget(svc.id), None)
    recs = records(await poll(reader))
    assert [r.severity_text for r in recs] == ["SUCCESS", "RUNNING"]
    b.finish("SUCCESS")
    (done,) = records(await poll(reader))
    assert done.severity_text == "SUCCESS"
    assert len({r.uid for r in [*recs, done]}) == 3


async def test_discovery_lists_real_time_and_edge_and_retires_vanished(sim: Simulator, client: ModelArtsClient) -> None:
    rt = sim.scenario.add_service(name="rt")
    edge = sim.scenario.add_service(name="ed", infer_type="edge")
    sim.scenario.add_service(name="bt", infer_type="batch")
    metrics = Metrics()
    source = source_for(client, metrics, discovery={"enabled": True})
    first = {t.key: t.active for t in await source.targets()}
    assert first == {f"service_update_logs/{rt.id}": True, f"service_update_logs/{edge.id}": True}
    with sim.scenario.lock:
        sim.scenario._services.pop(edge.id)
    second = {t.key: t.active for t in await source.targets()}
    assert second == {f"service_update_logs/{rt.id}": True, f"service_update_logs/{edge.id}": False}
    assert {t.key for t in await source.targets()} == {f"service_update_logs/{rt.id}"}


async def test_numbers_as_strings_and_missing_optional_fields() -> None:
    body = {
        "service_id": "s1",
        "logs": [
            {"update_time": "1700000000000", "result": "RUNNING"},
            {"update_time": 1700000001000, "result": "SUCCESS", "config": [{"weight": "70", "envs": {"K": "v"}}]},
        ],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    transport = httpx.MockTransport(handler)
    async with ModelArtsClient.connect("http://127.0.0.1:9", "p", retry=FAST_RETRY, transport=transport) as client:
        recs = records(await poll(source_for(client).open(ServiceTarget("s1"), None)))
    assert [r.severity_text for r in recs] == ["RUNNING", "SUCCESS"]
    assert recs[1].attributes["modelarts.service.config"] == [{"weight": 70, "envs": {"K": REDACTED}}]
    assert "service s1 update" in str(recs[0].body)


def test_unreadable_cursor_is_a_bad_cursor() -> None:
    with pytest.raises(BadCursor, match="unreadable cursor"):
        UpdateTracker.from_cursor('{"seen": 3}')


_history = st.lists(
    st.tuples(st.integers(0, 20), st.sampled_from(["RUNNING", "SUCCESS", "FAIL"])), min_size=0, max_size=15
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_history, min_size=1, max_size=5), st.integers(2, 20))
def test_tracker_emits_each_new_state_once(polls: list[list[tuple[int, str]]], bound: int) -> None:
    """Replaying any sequence of histories emits a state only when it differs from the last one."""
    tracker = UpdateTracker.from_cursor(None, max_updates=bound)
    last: dict[tuple[int, int], str] = {}
    for history in polls:
        tracker = UpdateTracker.from_cursor(tracker.cursor(), max_updates=bound)
        updates = [_Update(update_time=t, result=r) for t, r in history]
        floor = tracker.floor
        changed = tracker.changes(updates)
        keys = []
        seen_times: dict[int, int] = {}
        for u in sorted(updates, key=lambda u: u.update_time):
            pos = seen_times.get(u.update_time, 0)
            seen_times[u.update_time] = pos + 1
            keys.append(((u.update_time, pos), u.result))
        want = [(k[1], r) for k, r in keys if k >= floor and last.get(k) != r]
        assert [(pos, u.result) for pos, u in changed] == want
        for k, r in keys:
            last[k] = r
        assert len(tracker.results) <= bound


async def test_the_listing_gives_each_service_a_revision_that_changes_with_its_updates(
    sim: Simulator, client: ModelArtsClient
) -> None:
    svc = sim.scenario.add_service(name="rt")
    configured = sim.scenario.add_service(name="cfg")
    source = source_for(client, discovery={"enabled": True}, services=[{"id": configured.id}])

    async def revisions() -> dict[str, str | None]:
        return {t.key: t.revision for t in await source.targets() if isinstance(t, ServiceTarget)}

    before = await revisions()
    assert set(before) == {f"service_update_logs/{svc.id}", f"service_update_logs/{configured.id}"}
    assert all(before.values())  # a configured service that is listed too carries the listing's revision
    assert await revisions() == before  # nothing happened: the same revisions (no wake-up)
    update = svc.start_update()
    running = await revisions()
    key = f"service_update_logs/{svc.id}"
    assert running[key] != before[key] and running[key].startswith("deploying@")  # type: ignore[union-attr]
    assert running[f"service_update_logs/{configured.id}"] == before[f"service_update_logs/{configured.id}"]
    update.finish("SUCCESS")
    assert (await revisions())[key] != running[key]  # deploying -> running: news again
