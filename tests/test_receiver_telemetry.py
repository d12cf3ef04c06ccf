"""A running receiver's /metrics, /healthz and /readyz: the figures move as it works."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from telemetry_helpers import get, scrape, total

from collector_plugin.config import parse_config
from collector_plugin.plugins import load_sources
from collector_plugin.receiver import build_receiver
from collector_plugin.simulator import Scenario, Simulator
from collector_plugin.testing import MemoryTransport

P = "modelarts_receiver_"


def config(sim: Simulator, tmp: Path) -> dict[str, Any]:
    return {
        "modelarts": {
            "region": "sim-1",
            "endpoint": sim.url,
            "project_id": sim.project_id,
            "auth": {"ak": sim.ak, "sk": sim.sk},
            "rate_limit": {"requests_per_second": 60, "burst": 1},
        },
        "sources": {
            "training_job_logs_v1": {
                "poll_interval": "200ms",
                "start_at": "beginning",
                "jobs": [{"job_id": 7, "version_id": 1, "log_files": ["train.log"]}],
            }
        },
        "exporter": {
            "batch": {"max_records": 100, "max_delay": "50ms"},
            "retry_initial_backoff": "50ms",
            "retry_max_backoff": "100ms",
        },
        "checkpoint": {"path": str(tmp / "cp.db")},
        "telemetry": {"listen": "127.0.0.1:0"},
    }


async def test_metrics_move_while_catching_up(tmp_path: Path) -> None:
    data = "".join(f"[INFO] step {i} {'x' * 40}\n" for i in range(4000)).encode()  # ~220 KB: ~110 v1 calls
    scenario = Scenario()
    scenario.add_v1_job(7, 1, {"train.log": data})
    transport = MemoryTransport()
    with Simulator(scenario) as sim:
        registry = load_sources()
        receiver = build_receiver(
            parse_config(config(sim, tmp_path), registry, environ={}),
            registry,
            transport=transport,
            environ={},
            jitter=False,
        )
        assert receiver.telemetry is not None
        assert receiver.ready() == (False, "starting")
        stop = asyncio.Event()
        run = asyncio.create_task(receiver.run(stop))
        while receiver.telemetry.port is None:
            await asyncio.sleep(0.01)
        url = receiver.telemetry.url
        status, body = await asyncio.to_thread(get, url + "/healthz")
        assert (status, body.strip()) == (200, "ok")

        lags: list[float] = []
        exported: list[float] = []
        for _ in range(200):
            samples = await asyncio.to_thread(scrape, url + "/metrics")
            lag = total(samples, P + "target_lag_bytes", source="training_job_logs_v1")
            if any(k.startswith(P + "target_lag_bytes{") for k in samples):
                lags.append(lag)
            exported.append(total(samples, P + "records_exported_total"))
            if exported[-1] >= 4000 and lags and lags[-1] == 0:
                break
            await asyncio.sleep(0.1)
        status, body = await asyncio.to_thread(get, url + "/readyz")
        assert status == 200, body

        # The collector goes away: readiness says why; it comes back: ready again, nothing lost.
        transport.fail_next(10**9)
        scenario.v1_job(7, 1).append("train.log", b"[ERROR] after the outage\n")
        for _ in range(100):
            status, body = await asyncio.to_thread(get, url + "/readyz")
            if status == 503:
                break
            await asyncio.sleep(0.05)
        assert status == 503 and "export" in body
        transport.recover()
        for _ in range(100):
            if len(transport.records) >= 4001:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        final = await asyncio.to_thread(scrape, url + "/metrics")
        assert (await asyncio.to_thread(get, url + "/readyz"))[0] == 200
        stop.set()
        assert await asyncio.wait_for(run, 20)

    assert max(lags) > 0 and lags[-1] == 0, lags
    assert exported[0] < 4000 <= exported[-1]
    assert exported == sorted(exported)
    assert total(final, P + "records_exported_total") == 4001
    assert total(final, P + "bytes_read_total", source="training_job_logs_v1") >= len(data)
    assert total(final, P + "api_requests_total", outcome="ok") >= len(data) // 2048
    assert total(final, P + "export_failures_total") >= 1
    assert total(final, P + "queue_records") == 0
    assert total(final, P + "checkpoint_last_commit_timestamp_seconds") > 0
    assert total(final, P + "targets_active", source="training_job_logs_v1") == 1
    assert [r["body"] for r in transport.records][-1] == "[ERROR] after the outage"
