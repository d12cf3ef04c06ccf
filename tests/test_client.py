"""The shared API client against the simulator's fault injection: retries, backoff, limits, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from gc_helpers import httpx_garbage_after
from pydantic import BaseModel

from collector_plugin.auth import AkSkAuth
from collector_plugin.backoff import Backoff
from collector_plugin.budget import Budget, Priority
from collector_plugin.errors import ApiError, AuthError, ResponseFormatError
from collector_plugin.simulator import Scenario, Simulator
from collector_plugin.sources.modelarts.client import ModelArtsClient

FAST = Backoff(initial=0.01, maximum=0.05, max_attempts=4)
JOB = "job-client-test"
PREVIEW = "/v2/{project_id}/training-jobs/{id}/tasks/{task}/logs/preview"


class Preview(BaseModel):
    content: str
    full_size: int


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    scenario = Scenario()
    scenario.add_job(JOB, tasks=("worker-0",)).task("worker-0").append("hello 世界\n")
    with Simulator(scenario, quirks=set()) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[ModelArtsClient]:
    sim.faults.clear()
    async with ModelArtsClient.connect(
        sim.url, sim.project_id, auth=AkSkAuth(sim.ak, sim.sk), retry=FAST, rate_limit=1000, burst=1000
    ) as c:
        yield c


def preview_path(client: ModelArtsClient) -> str:
    return client.path("/v2/{project_id}/training-jobs/{id}/tasks/{task}/logs/preview", id=JOB, task="worker-0")


async def get_preview(client: ModelArtsClient) -> Preview:
    return await client.get_model(preview_path(client), Preview, endpoint=PREVIEW)


def ok_count(client: ModelArtsClient, outcome: str = "ok") -> float:
    return client.metrics.api_requests.labels(PREVIEW, outcome)._value.get()


async def test_signed_request_succeeds(client: ModelArtsClient) -> None:
    preview = await get_preview(client)
    assert preview.content == "hello 世界\n"
    assert preview.full_size == len("hello 世界\n".encode())


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 429, "retry_after": "0"},
        {"status": 500},
        {"status": 503},
        {"status": 400, "error_code": "APIG.0308"},
        {"status": 400, "error_code": "ModelArts.6101"},
        {"status": None, "reset": True},
    ],
    ids=["429", "500", "503", "APIG.0308", "ModelArts.6101", "reset"],
)
async def test_retryable_faults_are_retried(sim: Simulator, client: ModelArtsClient, fault: dict[str, Any]) -> None:
    sim.faults.add(r"/logs/preview$", times=2, **fault)
    sim.reset_requests()
    preview = await get_preview(client)
    assert preview.content.startswith("hello")
    assert sim.count() == 3  # two faults, then the answer
    assert client.metrics.api_retries.labels(PREVIEW, _retry_reason(fault))._value.get() == 2


def _retry_reason(fault: dict[str, Any]) -> str:
    """Flow control (429, APIG.0308, ModelArts.6101) waits for budget; the rest is a retry by status."""
    if fault.get("reset"):
        return "connection"
    if fault["status"] == 429 or fault.get("error_code") in ("APIG.0308", "ModelArts.6101"):
        return "throttled"
    return str(fault["status"])


async def test_retry_after_is_honoured(sim: Simulator, client: ModelArtsClient) -> None:
    sim.faults.throttle(r"/logs/preview$", retry_after="0.4", times=1)
    started = time.monotonic()
    await get_preview(client)
    assert time.monotonic() - started >= 0.4
    assert client.metrics.throttle_wait_seconds._value.get() >= 0.4


async def test_gives_up_after_max_attempts_with_clear_error(sim: Simulator, client: ModelArtsClient) -> None:
    sim.faults.error(r"/logs/preview$", status=503, times=None, error_code="ModelArts.0001")
    with pytest.raises(ApiError) as info:
        await get_preview(client)
    err = info.value
    assert (err.status, err.error_code, err.endpoint) == (503, "ModelArts.0001", PREVIEW)
    assert err.retryable
    assert sim.count(status=503) == FAST.max_attempts


async def test_other_4xx_not_retried(sim: Simulator, client: ModelArtsClient) -> None:
    sim.reset_requests()
    path = client.path("/v2/{project_id}/training-jobs/{id}/tasks/{task}/logs/preview", id="no-such-job", task="w")
    with pytest.raises(ApiError) as info:
        await client.get_model(path, Preview, endpoint=PREVIEW)
    assert info.value.status == 404 and not info.value.retryable
    assert sim.count() == 1
    assert str(info.value).startswith(PREVIEW + ": HTTP 404")  # the endpoint template names where


async def test_malformed_body_names_endpoint(sim: Simulator, client: ModelArtsClient) -> None:
    sim.faults.malformed(r"/logs/preview$")
    with pytest.raises(ResponseFormatError) as info:
        await get_preview(client)
    assert info.value.endpoint == PREVIEW
    assert "not JSON" in str(info.value)


async def test_wrong_shape_names_field(sim: Simulator, client: ModelArtsClient) -> None:
    sim.faults.malformed(r"/logs/preview$", body='{"content": "x", "full_size": "lots"}')
    with pytest.raises(ResponseFormatError) as info:
        await get_preview(client)
    assert info.value.field == "full_size"


async def test_numbers_as_strings_are_accepted(sim: Simulator, client: ModelArtsClient) -> None:
    sim.faults.malformed(r"/logs/preview$", body='{"content": "x", "full_size": "10"}')
    assert (await get_preview(client)).full_size == 10


async def test_wrong_sk_is_rejected_clearly(sim: Simulator) -> None:
    async with ModelArtsClient.connect(
        sim.url, sim.project_id, auth=AkSkAuth(sim.ak, "WRONG-SECRET"), retry=FAST
    ) as bad:
        with pytest.raises(AuthError) as info:
            await get_preview(bad)
    message = str(info.value)
    assert "401" in message and "check the credentials" in message
    assert "WRONG-SECRET" not in message


async def test_the_budget_spaces_requests_at_its_ceiling() -> None:
    budget = Budget(50.0, 2)
    started = time.monotonic()
    for i in range(12):
        await budget.acquire(Priority.IDLE, f"k{i}")
    await budget.aclose()
    # 2 from the burst, then 10 at 50/s: at least 0.2 s
    assert time.monotonic() - started >= 0.19


async def test_concurrency_limit_holds_for_the_whole_client() -> None:
    in_flight = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(200, json={"content": "", "full_size": 0})

    async with ModelArtsClient.connect(
        "http://api.test", "p", transport=httpx.MockTransport(handler), max_concurrency=3, rate_limit=1e6, burst=1000
    ) as c:
        await asyncio.gather(*(c.get_model("/x", Preview, endpoint="/x") for _ in range(20)))
    assert peak == 3


async def test_error_message_fields_tolerated() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error_code": "ModelArts.0105", "error_message": "bad offset"})

    async with ModelArtsClient.connect("http://api.test", "p", transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(ApiError) as info:
            await c.request_json("GET", "/x", endpoint="/x")
    assert info.value.error_msg == "bad offset" and info.value.error_code == "ModelArts.0105"


async def test_an_api_answer_leaves_no_reference_cycle_holding_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"content": "x" * 100_000, "full_size": 100_000})

    async with ModelArtsClient.connect("http://api.test", "p", transport=httpx.MockTransport(handler)) as c:
        await c.request_json("GET", "/x", endpoint="/x")
        assert await httpx_garbage_after(lambda: c.request_json("GET", "/x", endpoint="/x")) == []
