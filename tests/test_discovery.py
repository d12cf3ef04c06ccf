"""Discovery: jobs by phase and name over every page, services, v1 file names, tolerant models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector_plugin.backoff import Backoff
from collector_plugin.config import parse_config
from collector_plugin.errors import ApiError, ConfigError
from collector_plugin.plugins import load_sources
from collector_plugin.simulator import Simulator
from collector_plugin.simulator.server import JOB_SEARCHES, SERVICES
from collector_plugin.sources.modelarts.client import ModelArtsClient
from collector_plugin.sources.modelarts.discovery import (
    DiscoveryConfig,
    get_job,
    is_ended,
    list_services,
    search_jobs,
    v1_log_file_names,
)

FAST_RETRY = Backoff(initial=0.001, maximum=0.01, max_attempts=4)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(require_auth=False)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[ModelArtsClient]:
    async with ModelArtsClient.connect(sim.url, sim.project_id, retry=FAST_RETRY, rate_limit=10_000, burst=10_000) as c:
        yield c


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> ModelArtsClient:
    return ModelArtsClient.connect(
        "http://127.0.0.1:9", "proj", retry=FAST_RETRY, transport=httpx.MockTransport(handler), rate_limit=10_000
    )


async def test_get_job_reads_name_phase_tasks(sim: Simulator, client: ModelArtsClient) -> None:
    job = sim.scenario.add_job(name="resnet", tasks=("worker-0", "worker-1"), phase="Running")
    info = await get_job(client, job.id)
    assert (info.id, info.name, info.phase, info.tasks, info.ended) == (
        job.id,
        "resnet",
        "Running",
        ("worker-0", "worker-1"),
        False,
    )
    job.phase = "Failed"
    assert (await get_job(client, job.id)).ended


async def test_get_job_unknown_is_an_api_error(client: ModelArtsClient) -> None:
    with pytest.raises(ApiError) as err:
        await get_job(client, "no-such-job")
    assert err.value.status == 404


async def test_search_jobs_walks_every_page_and_filters(sim: Simulator, client: ModelArtsClient) -> None:
    running = {sim.scenario.add_job(name=f"train-{i:03d}").id for i in range(120)}
    pending = sim.scenario.add_job(name="train-pending", phase="Pending").id
    sim.scenario.add_job(name="train-done", phase="Completed")
    sim.scenario.add_job(name="other-run")
    sim.reset_requests()

    found = await search_jobs(client, DiscoveryConfig(enabled=True, name_pattern=r"^train-"))
    assert {j.id for j in found} == running | {pending}
    assert all(not j.ended and j.tasks == ("worker-0",) for j in found)
    assert sim.count(JOB_SEARCHES) == 3  # 122 matching jobs in pages of 50

    failed = await search_jobs(client, DiscoveryConfig(phases=["completed"]))
    assert [j.name for j in failed] == ["train-done"]
    assert failed[0].ended


async def test_search_jobs_filters_phase_even_when_the_server_ignores_filters() -> None:
    jobs = [
        {"metadata": {"id": "a", "name": "a"}, "status": {"phase": "Running", "tasks": ["w"]}},
        {"metadata": {"id": "b", "name": "b"}, "status": {"phase": "Terminated"}},
        {"metadata": {"id": "c"}},  # no name, no status: tolerated
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["filters"][0]["key"] == "phase"
        return httpx.Response(200, json={"total": "3", "count": "3", "items": jobs})

    async with mock_client(handler) as client:
        found = await search_jobs(client, DiscoveryConfig())
    assert [(j.id, j.tasks) for j in found] == [("a", ("w",))]


async def test_search_jobs_stops_when_the_server_ignores_offset() -> None:
    page = [{"metadata": {"id": f"j{i}", "name": "n"}, "status": {"phase": "Running"}} for i in range(50)]
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json={"items": page})

    async with mock_client(handler) as client:
        found = await search_jobs(client, DiscoveryConfig())
    assert len(found) == 50
    assert calls == 2


async def test_list_services_real_time_and_edge_only_every_page(sim: Simulator, client: ModelArtsClient) -> None:
    wanted = {sim.scenario.add_service(name=f"svc-{i}").id for i in range(1001)}
    edge = sim.scenario.add_service(name="edge-svc", infer_type="edge").id
    sim.scenario.add_service(name="batch-svc", infer_type="batch")
    sim.reset_requests()

    found = await list_services(client, DiscoveryConfig())
    assert {s.id for s in found} == wanted | {edge}
    assert sim.count(SERVICES) == 2

    named = await list_services(client, DiscoveryConfig(name_pattern="^edge"))
    assert [(s.id, s.name, s.infer_type) for s in named] == [(edge, "edge-svc", "edge")]


async def test_v1_log_file_names(sim: Simulator, client: ModelArtsClient) -> None:
    sim.scenario.add_v1_job(7, 3, {"a.log": b"x", "b.log": b"y"})
    assert sorted(await v1_log_file_names(client, 7, 3)) == ["a.log", "b.log"]


async def test_v1_log_file_names_is_success_false_is_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"is_success": False, "error_code": "ModelArts.0001", "error_msg": "nope"})

    async with mock_client(handler) as client:
        with pytest.raises(ApiError, match=r"ModelArts\.0001"):
            await v1_log_file_names(client, 1, 1)


@given(
    st.sampled_from(["Completed", "Failed", "Terminated", "Abnormal", "Stopped"]),
    st.lists(st.booleans(), min_size=10, max_size=10),
)
def test_ended_phases_in_any_case(phase: str, upper: list[bool]) -> None:
    mixed = "".join(c.upper() if u else c.lower() for c, u in zip(phase, upper, strict=False))
    assert is_ended(mixed)


@pytest.mark.parametrize("phase", ["Running", "Pending", "Creating", "Terminating", ""])
def test_live_phases_are_not_ended(phase: str) -> None:
    assert not is_ended(phase)


def _config(discovery: dict[str, Any]) -> dict[str, Any]:
    return {
        "modelarts": {"region": "r", "project_id": "p", "auth": {"token": "t"}},
        "sources": {"training_job_events": {"discovery": discovery}},
    }


def test_bad_name_pattern_is_a_config_error_at_its_key_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_config({"enabled": True, "name_pattern": "train-(["}), load_sources(), environ={})
    assert any(p.startswith("sources.training_job_events.discovery.name_pattern:") for p in err.value.problems)


def test_good_name_pattern_validates() -> None:
    config = parse_config(_config({"enabled": True, "name_pattern": "^train-"}), load_sources(), environ={})
    assert config.sources["training_job_events"].discovery.name_pattern == "^train-"


async def test_one_job_search_serves_task_logs_and_events_discovery(sim: Simulator, client: ModelArtsClient) -> None:
    """Two sources discovering the same phases at once spend one search; each asking again gets a new one."""
    for i in range(3):
        sim.scenario.add_job(name=f"train-{i}")
    logs, events = DiscoveryConfig(enabled=True), DiscoveryConfig(enabled=True, name_pattern="^train-[01]$")
    sim.reset_requests()
    found_logs, found_events = await asyncio.gather(search_jobs(client, logs), search_jobs(client, events))
    assert sim.count(JOB_SEARCHES) == 1
    assert len(found_logs) >= 3 and sorted(j.name for j in found_events) == ["train-0", "train-1"]
    await search_jobs(client, logs)  # the same source again: a fresh search, never a stale answer
    assert sim.count(JOB_SEARCHES) == 2
