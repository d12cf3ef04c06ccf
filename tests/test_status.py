"""The status document and page: states, order, caps, redaction; and a real browser on /status."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector_plugin.budget import Limit, Snapshot
from collector_plugin.config import parse_config
from collector_plugin.logs import clear_secrets, register_secret
from collector_plugin.plugins import load_sources
from collector_plugin.receiver import build_receiver
from collector_plugin.simulator import Scenario, Simulator
from collector_plugin.status import (
    CURSOR_PREFIX,
    STATES,
    StatusInput,
    TargetInput,
    render_html,
    short_cursor,
    status_document,
    target_state,
)
from collector_plugin.telemetry import Metrics, TelemetryServer
from collector_plugin.testing import MemoryTransport

try:
    from telemetry_helpers import get
except ImportError:  # tests/ became a package
    from tests.telemetry_helpers import get

SK = "Zx9SecretKeyValue0123456789abcdefSK"
SIGNED = (
    "https://bucket.obs.cn-north-4.myhuaweicloud.com/logs/worker-0.log"
    "?AccessKeyId=AKEXAMPLE&Expires=1767225600&Signature=c2lnbmVkLXNpZ25hdHVyZQ%3D%3D"
)
IDLE_BUDGET = Snapshot(rate=20.0, ceiling=20.0, burst=40, known_limits=(), queued={}, paused_for=0.0, throttled=0)


def target(key: str = "t", **fields: Any) -> TargetInput:
    defaults: dict[str, Any] = {"source": "training_task_logs", "last_poll_age": 1.0, "polls": 3}
    return TargetInput(key=key, **{**defaults, **fields})


def doc_for(*targets: TargetInput, **fields: Any) -> dict[str, Any]:
    return status_document(StatusInput(targets=targets, budgets={"modelarts": IDLE_BUDGET}, **fields))


# -- states


@pytest.mark.parametrize(
    ("fields", "holding", "expected"),
    [
        ({"failed": "unreadable cursor", "failures": 2}, True, "failed"),
        ({"failures": 1, "last_error": "ApiError: 500", "lag_bytes": 10.0}, True, "failing"),
        ({"last_poll_age": 500.0, "lag_bytes": 10.0}, True, "throttled"),
        ({"last_poll_age": 500.0}, False, "idle"),  # long idle, but nothing holds its calls
        ({"last_poll_age": 2.0}, True, "idle"),  # the budget queues others, this one is on time
        ({"lag_bytes": 4096.0}, False, "behind"),
        ({"lag_seconds": 30.0}, False, "behind"),
        ({"draining": True}, False, "draining"),
        ({"last_poll_age": None, "polls": 0}, False, "polling"),
        ({"news": True}, False, "polling"),
        ({"lag_bytes": 0.0, "lag_seconds": 0.0}, False, "idle"),
    ],
)
def test_state_is_derived_from_what_the_scheduler_knows(fields: dict[str, Any], holding: bool, expected: str) -> None:
    assert target_state(target(**fields), holding) == expected


def test_a_held_budget_marks_overdue_targets_throttled() -> None:
    held = Snapshot(20.0, 20.0, 40, (Limit(8, 1.0),), {"IDLE": 3}, 0.0, 5)
    late = target("late", last_poll_age=400.0)
    on_time = target("on-time", last_poll_age=1.0)
    doc = status_document(StatusInput(targets=[late, on_time], budgets={"modelarts": held}))
    assert {r["key"]: r["state"] for r in doc["targets"]} == {"late": "throttled", "on-time": "idle"}
    assert doc["budgets"] == [
        {
            "name": "modelarts",
            "rate": 20.0,
            "ceiling": 20.0,
            "burst": 40,
            "queued": {"IDLE": 3},
            "paused_for_seconds": 0.0,
            "throttled": 5,
            "known_limits": ["8/1s"],
        }
    ]


def test_next_poll_follows_backoff_for_a_failing_target() -> None:
    doc = doc_for(
        target("ok", news=True, last_poll_age=1.0, poll_interval=5.0),
        target("bad", failures=3, last_poll_age=1.0, poll_interval=5.0, max_poll_interval=60.0),
        target("gone", failed="bad cursor"),
    )
    rows = {r["key"]: r for r in doc["targets"]}
    assert rows["ok"]["next_poll_in_seconds"] == 4.0
    assert rows["bad"]["next_poll_in_seconds"] == 39.0  # 2 * 5 * 2**2, minus the second since
    assert rows["gone"]["next_poll_in_seconds"] is None


targets_strategy = st.lists(
    st.builds(
        TargetInput,
        source=st.sampled_from(["training_task_logs", "training_job_events", "service_update_logs"]),
        key=st.text("abcdef0123456789/", min_size=1, max_size=12),
        failures=st.integers(0, 3),
        failed=st.sampled_from(["", "bad cursor"]),
        last_poll_age=st.one_of(st.none(), st.floats(0, 1000)),
        draining=st.booleans(),
        news=st.booleans(),
        lag_bytes=st.one_of(st.none(), st.floats(0, 1e9)),
        lag_seconds=st.one_of(st.none(), st.floats(0, 1e4)),
    ),
    max_size=60,
)


@given(targets=targets_strategy, max_rows=st.integers(1, 80))
def test_urgent_first_counts_add_up_and_the_table_is_capped(targets: list[TargetInput], max_rows: int) -> None:
    doc = status_document(StatusInput(targets=targets, budgets={}), max_rows=max_rows)
    ranks = [STATES.index(r["state"]) for r in doc["targets"]]
    assert ranks == sorted(ranks)
    assert len(doc["targets"]) == doc["targets_shown"] == min(len(targets), max_rows)
    assert sum(doc["counts"]["by_state"].values()) == doc["counts"]["total"] == len(targets)
    for state in STATES:  # the shown rows are the most urgent ones
        shown = sum(1 for r in doc["targets"] if r["state"] == state)
        assert shown <= doc["counts"]["by_state"][state]
    for source, per in doc["counts"]["by_source"].items():
        assert sum(per.values()) == sum(1 for t in targets if t.source == source)
    json.dumps(doc)  # JSON-able as it is


@given(cursor=st.text(min_size=0, max_size=400))
def test_cursors_show_only_a_short_prefix(cursor: str) -> None:
    shown = short_cursor(cursor)
    assert shown is not None
    if len(cursor) <= CURSOR_PREFIX:
        assert shown == cursor
    else:
        assert shown.startswith(cursor[:CURSOR_PREFIX])
        assert cursor[: CURSOR_PREFIX + 1] not in shown.replace(cursor[:CURSOR_PREFIX] + "…", "", 1)
        assert f"({len(cursor)} chars)" in shown


def test_a_hex_cursor_with_log_bytes_is_not_shown_whole() -> None:
    cursor = "v2:1234:" + b"[INFO] secret training data".hex()
    doc = doc_for(target(cursor=cursor))
    page = render_html(doc)
    assert cursor not in json.dumps(doc) and cursor not in page
    assert b"secret".hex() not in page


# -- redaction and escaping


@pytest.fixture
def secret() -> Iterator[str]:
    register_secret(SK)
    yield SK
    clear_secrets()


def test_secrets_and_signed_urls_never_appear(secret: str) -> None:
    error = f"ApiError: GET {SIGNED} failed; sk={secret}; X-Auth-Token: tok-ABCDEFGHIJKLMNOP"
    doc = doc_for(
        target("a", failures=2, last_error=error),
        target("b", failed=f"bad cursor from {SIGNED}"),
        last_export_ok=False,
        last_export_error=f"collector said {secret}",
        ready=(False, f"last export failed: {secret}"),
    )
    outputs = {"json": json.dumps(doc), "html": render_html(doc)}
    for name, text in outputs.items():
        for leak in (secret, "Signature=", "c2lnbmVkLXNpZ25hdHVyZQ", "AccessKeyId=AKEXAMPLE", "tok-ABCDEFGHIJKLMNOP"):
            assert leak not in text, (name, leak)
        assert "worker-0.log" in text, name  # the error still says where


def test_everything_printed_is_escaped() -> None:
    nasty = '<script>alert("x")</script>'
    doc = doc_for(target(nasty, source="third_party", last_error=f"ApiError: {nasty}", failures=1))
    page = render_html(doc)
    assert nasty not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<script" not in page.lower()


def test_the_page_refreshes_itself_and_loads_nothing_from_elsewhere() -> None:
    page = render_html(doc_for(target()))
    assert '<meta http-equiv="refresh" content="5">' in page
    assert not re.search(r"""(src|href)\s*=""", page, re.IGNORECASE)
    assert "@import" not in page and "url(" not in page


def test_thousands_of_targets_are_counted_and_the_table_capped() -> None:
    many = [target(f"job-{i:04d}/worker-0", lag_bytes=float(i % 7)) for i in range(3000)]
    many[2500] = target("job-2500/worker-0", failures=4, last_error="ApiError: 503")
    doc = doc_for(*many)
    page = render_html(doc)
    assert doc["counts"]["total"] == 3000
    assert doc["counts"]["by_state"]["failing"] == 1
    assert doc["targets"][0]["key"] == "job-2500/worker-0"
    assert page.count("<tr class=") == 500
    assert "showing the first 500 of 3000 targets" in page


# -- the listener


def test_status_routes_serve_the_provider_document(secret: str) -> None:
    doc = doc_for(target("job-1/worker-0", failures=1, last_error=f"ApiError: {SIGNED} {secret}"))
    server = TelemetryServer("127.0.0.1:0", Metrics(), lambda: (True, "ready"), status=lambda: doc)
    with server:
        code, body = get(server.url + "/status.json")
        assert code == 200 and json.loads(body) == doc
        code, page = get(server.url + "/status")
        assert code == 200 and "job-1/worker-0" in page and "failing" in page
        for text in (body, page):
            assert secret not in text and "Signature=" not in text


def test_status_is_503_with_the_reason_when_the_provider_fails() -> None:
    def broken() -> dict[str, Any]:
        raise TimeoutError("the loop is busy")

    with TelemetryServer("127.0.0.1:0", Metrics(), lambda: (True, "ready"), status=broken) as server:
        assert get(server.url + "/status.json") == (503, "status unavailable: TimeoutError\n")


def test_status_is_404_without_a_provider() -> None:
    with TelemetryServer("127.0.0.1:0", Metrics(), lambda: (True, "ready")) as server:
        assert get(server.url + "/status")[0] == 404


# -- a running receiver, and a real browser


def receiver_config(sim: Simulator, tmp: Path, jobs: list[int], **telemetry: Any) -> dict[str, Any]:
    return {
        "modelarts": {
            "region": "sim-1",
            "endpoint": sim.url,
            "project_id": sim.project_id,
            "auth": {"ak": sim.ak, "sk": sim.sk},
            "retry": {"max_attempts": 2, "initial_backoff": "20ms", "max_backoff": "50ms"},
            "rate_limit": {"requests_per_second": 200, "burst": 50},
        },
        "sources": {
            "training_job_logs_v1": {
                "poll_interval": "100ms",
                "max_poll_interval": "300ms",
                "start_at": "beginning",
                "jobs": [{"job_id": j, "version_id": 1, "log_files": ["train.log"]} for j in jobs],
            }
        },
        "exporter": {"batch": {"max_records": 100, "max_delay": "20ms"}},
        "checkpoint": {"path": str(tmp / "cp.db")},
        "telemetry": {"listen": "127.0.0.1:0", **telemetry},
    }


class RunningReceiver:
    """A receiver against the simulator, its event loop task and its listener URL."""

    def __init__(self, sim: Simulator, tmp: Path, jobs: list[int], **telemetry: Any) -> None:
        registry = load_sources()
        config = parse_config(receiver_config(sim, tmp, jobs, **telemetry), registry, environ={})
        self.receiver = build_receiver(config, registry, transport=MemoryTransport(), environ={}, jitter=False)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[bool] | None = None

    async def __aenter__(self) -> str:
        self.task = asyncio.create_task(self.receiver.run(self.stop))
        telemetry = self.receiver.telemetry
        assert telemetry is not None
        await wait_for(lambda: telemetry.port is not None and self.receiver.started)
        return telemetry.url

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 20)


async def wait_for(condition: Any, timeout: float = 30.0) -> None:
    """Poll ``condition`` until true; ``timeout`` is only a guard against a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(condition):
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def status_json(url: str) -> dict[str, Any]:
    code, body = await asyncio.to_thread(get, url + "/status.json")
    assert code == 200, body
    doc: dict[str, Any] = json.loads(body)
    return doc


async def wait_for_status(url: str, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        doc = await status_json(url)
        if predicate(doc):
            return doc
        assert loop.time() < deadline, f"status never matched: {doc}"
        await asyncio.sleep(0.1)


def states(doc: dict[str, Any]) -> dict[str, str]:
    return {row["key"]: row["state"] for row in doc["targets"]}


def scenario_with(jobs: list[int]) -> Scenario:
    scenario = Scenario()
    for job in jobs:
        scenario.add_v1_job(job, 1, {"train.log": "".join(f"[INFO] job {job} step {i}\n" for i in range(50))})
    return scenario


async def test_status_json_of_a_running_receiver_shows_the_failing_target(tmp_path: Path) -> None:
    jobs = [7, 8, 9]
    with Simulator(scenario_with(jobs)) as sim:
        sim.faults.error(r"/training-jobs/8/versions/1/log$", status=500, times=None)
        async with RunningReceiver(sim, tmp_path, jobs) as url:
            # Two jobs' 100 lines acknowledged and committed: the page says when.
            await wait_for_status(
                url,
                lambda d: (
                    d["pipeline"]["records_exported"] >= 100
                    and d["pipeline"]["last_ack_age_seconds"] is not None
                    and d["checkpoint_age_seconds"] is not None
                ),
            )
            doc = await wait_for_status(url, lambda d: "failing" in states(d).values())
            failing = [r for r in doc["targets"] if r["state"] == "failing"]
            assert [r["key"] for r in failing] == [r["key"] for r in doc["targets"] if "/8/" in r["key"]]
            assert doc["targets"][0]["state"] == "failing"  # most urgent first
            assert "500" in failing[0]["last_error"]
            assert doc["budgets"] and doc["budgets"][0]["name"] == "modelarts"
            assert doc["ready"] is True  # one job's server error is not a reason to restart


async def test_readyz_fails_only_after_auth_is_refused_for_unready_after(tmp_path: Path) -> None:
    with Simulator(scenario_with([7])) as sim:
        async with RunningReceiver(sim, tmp_path, [7], unready_after="400ms") as url:
            await wait_for_status(url, lambda d: d["targets"] and d["targets"][0]["polls"] >= 1)
            assert (await asyncio.to_thread(get, url + "/readyz"))[0] == 200
            rule = sim.faults.error(r"/training-jobs/", status=401, times=None)
            loop = asyncio.get_running_loop()
            refused_from = loop.time()
            code, body = 200, ""
            while code == 200:
                assert loop.time() - refused_from < 30, "never became unready"
                code, body = await asyncio.to_thread(get, url + "/readyz")
                await asyncio.sleep(0.05)
            assert loop.time() - refused_from >= 0.4  # not before unready_after of refusals
            assert code == 503 and "auth" in body and sim.sk not in body
            rule.times = 0  # credentials fixed: the next accepted call makes it ready again
            await wait_for(lambda: get(url + "/readyz")[0] == 200)


# The real browser: Debian's chromium and chromium-driver (.ci/run installs them).
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="status-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()


def page_rows(driver: Any) -> dict[str, str]:
    """``{target: state}`` as the browser renders the targets table."""
    from selenium.webdriver.common.by import By

    table = driver.find_elements(By.TAG_NAME, "table")[-1]
    header = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    rows = {}
    for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr"):
        cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        rows[cells[header.index("target")]] = cells[header.index("state")]
    return rows


async def test_a_real_browser_renders_every_target_and_the_failing_one(tmp_path: Path, browser: Any) -> None:
    jobs = [11, 12, 13, 14]
    with Simulator(scenario_with(jobs)) as sim:
        sim.faults.error(r"/training-jobs/13/versions/1/log$", status=500, times=None)
        async with RunningReceiver(sim, tmp_path, jobs) as url:
            doc = await wait_for_status(
                url, lambda d: len(d["targets"]) == 4 and list(states(d).values()).count("failing") == 1
            )
            keys = set(states(doc))
            await asyncio.to_thread(browser.get, url + "/status")
            rows = await asyncio.to_thread(page_rows, browser)
            title = await asyncio.to_thread(lambda: browser.title)
    assert title == "modelarts-receiver status"
    assert set(rows) == keys
    assert [k for k, s in rows.items() if s == "failing"] == [k for k in keys if "/13/" in k]
    assert next(iter(rows.values())) == "failing"  # most urgent first, as the user sees it
