"""End to end: simulator -> receiver -> a real OTLP collector (rotel), over gRPC and HTTP; and into Loki.

What the collector received is checked record by record against what the simulator served; the
collector is taken down mid-run and brought back, and nothing is lost. The same run into the Loki
stand-in (tests/loki_sink.py) checks what a user sees: each log one stream, every line once, no
piece of a long line over Loki's 256,000 bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector_plugin.config import parse_config
from collector_plugin.plugins import load_sources
from collector_plugin.receiver import Receiver, build_receiver
from collector_plugin.simulator import Scenario, Simulator, Update

try:
    from loki_sink import MAX_LINE_BYTES, LokiSink, streams_by
    from rotel_harness import RotelCollector
except ImportError:  # pragma: no cover
    from tests.loki_sink import MAX_LINE_BYTES, LokiSink, streams_by
    from tests.rotel_harness import RotelCollector

pytestmark = pytest.mark.e2e

JOB = "0a1b2c3d-e2e0-4000-8000-000000000001"
SERVICE = "5e1f0000-e2e0-4000-8000-000000000002"


def log_text(n: int) -> bytes:
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            out.append(f"[ModelArts Service Log][INFO] step {i} 训练进行中 🚀\n")
        elif kind == 1:
            out.append(f"epoch {i} loss=0.{i:04d}\r\n")
        elif kind == 2:
            out.append(f"[WARNING] slow step {i}: {'é' * (i % 700)}\n")
        elif kind == 3:
            out.append(f"ERROR: worker {i} 出错 — retrying\n")
        else:
            out.append(f"plain line {i} {'x' * (i % 3000)}\n")
    return "".join(out).encode()


def expected_lines(data: bytes) -> list[str]:
    return [line.rstrip(b"\r").decode() for line in data.split(b"\n")[:-1]]


def scenario() -> tuple[Scenario, dict[str, Any], Update]:
    sc = Scenario()
    job = sc.add_job(JOB, name="resnet-e2e", tasks=("worker-0",), phase="Running")
    job.task("worker-0").append(log_text(600))
    base = 1_700_000_000_000
    for i in range(120):
        job.add_event(
            f"event {i}",
            level=("Info", "Warning", "Error")[i % 3],
            source=("Job", "K8s", "Task")[i % 3],
            time_ms=base + (i // 7) * 1000,
        )
    v1 = sc.add_v1_job(10, 11, {"log1.log": log_text(150)})
    service = sc.add_service(SERVICE, name="resnet-svc", infer_type="real-time")
    update = service.start_update(time_ms=base)  # RUNNING now; finished while the receiver runs
    expected = {
        "task": expected_lines(job.task("worker-0").data),
        "v1": expected_lines(v1.file("log1.log").data),
        "events": [f"event {i}" for i in range(120)],
        "updates": 2,
    }
    return sc, expected, update


def receiver_config(sim: Simulator, tmp: Path, protocol: str, endpoint: str) -> dict[str, Any]:
    fast = {"poll_interval": "200ms", "max_poll_interval": "1s"}
    return {
        "modelarts": {
            "region": "sim-1",
            "endpoint": sim.url,
            "project_id": sim.project_id,
            "auth": {"ak": sim.ak, "sk": sim.sk},
        },
        "sources": {
            "training_task_logs": {**fast, "start_at": "beginning", "flush_after": "500ms", "jobs": [{"id": JOB}]},
            "training_job_logs_v1": {
                **fast,
                "start_at": "beginning",
                "flush_after": "500ms",
                "jobs": [{"job_id": 10, "version_id": 11, "log_files": ["log1.log"]}],
            },
            "training_job_events": {**fast, "jobs": [{"id": JOB}]},
            "service_update_logs": {**fast, "services": [{"id": SERVICE}]},
        },
        "exporter": {
            "protocol": protocol,
            "endpoint": endpoint,
            "batch": {"max_records": 200, "max_delay": "100ms"},
            "retry_max_backoff": "500ms",
        },
        "checkpoint": {"path": str(tmp / "cp.db")},
        "telemetry": {"listen": ""},
    }


def by_kind(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"task": [], "v1": [], "events": [], "updates": []}
    for r in records:
        attrs = r["attributes"]
        if r["event_name"] == "modelarts.training_job.event":
            out["events"].append(r)
        elif r["event_name"] == "modelarts.service.update":
            out["updates"].append(r)
        elif "modelarts.task.id" in attrs:
            out["task"].append(r)
        elif "log.file.name" in attrs:
            out["v1"].append(r)
    return out


def total(expected: dict[str, Any]) -> int:
    return len(expected["task"]) + len(expected["v1"]) + len(expected["events"]) + expected["updates"]


async def wait_for(collector: RotelCollector, n: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        records = await asyncio.to_thread(collector.records)
        if len(records) >= n or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.05)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``predicate``; the timeout is a guard against a hang, never expected to be reached."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


def export_failures(receiver: Receiver) -> float:
    return sum(
        s.value for m in receiver.metrics.export_failures.collect() for s in m.samples if s.name.endswith("_total")
    )


def update_results(records: list[dict[str, Any]]) -> set[str]:
    return {r["attributes"]["modelarts.service.update.result"] for r in by_kind(records)["updates"]}


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_everything_served_arrives_once_in_order(tmp_path: Path, protocol: str) -> None:
    sc, expected, update = scenario()
    collector = RotelCollector(tmp_path / "rotel")
    collector.start()
    try:
        with Simulator(sc, v1_split="replace" if protocol == "grpc" else "drop") as sim:
            endpoint = collector.grpc_endpoint if protocol == "grpc" else collector.http_endpoint
            config = parse_config(receiver_config(sim, tmp_path, protocol, endpoint), load_sources(), environ={})
            receiver = build_receiver(config, load_sources(), environ={}, telemetry=False, jitter=False)
            stop = asyncio.Event()
            run = asyncio.create_task(receiver.run(stop))
            # Take the collector down mid-run, keep it down while there is news to send, bring it
            # back: nothing may be lost. Each step waits on a condition, not on a clock: the
            # update's RUNNING state delivered (so the run is under way), then, with the collector
            # gone, the update finished and an export of its news refused.
            await until(lambda: "RUNNING" in update_results(collector.records()), "the update's RUNNING state")
            await asyncio.to_thread(collector.stop)
            refused = export_failures(receiver)
            update.finish("SUCCESS")
            await until(lambda: export_failures(receiver) > refused, "an export refused while the collector is down")
            await asyncio.to_thread(collector.start)
            records = await wait_for(collector, total(expected), timeout=60)
            stop.set()
            assert await asyncio.wait_for(run, 30) is True
            # The receiver has flushed and exited: nothing more can come. rotel prints what it
            # acknowledged before it exits, so a record sent twice would show up now.
            await asyncio.to_thread(collector.stop)
            records = await asyncio.to_thread(collector.records)
    finally:
        collector.stop()

    kinds = by_kind(records)
    uids = [r["attributes"]["log.record.uid"] for r in records]
    assert len(uids) == len(set(uids)), "a record arrived twice"
    assert [r["body"] for r in kinds["task"]] == expected["task"]
    assert [r["body"] for r in kinds["v1"]] == expected["v1"]
    assert sorted(r["body"] for r in kinds["events"]) == sorted(expected["events"])
    assert len(kinds["updates"]) == expected["updates"]
    assert {r["attributes"]["modelarts.service.update.result"] for r in kinds["updates"]} == {"RUNNING", "SUCCESS"}
    first = kinds["task"][0]
    assert first["resource"]["service.name"] == "modelarts-training"
    assert first["resource"]["cloud.provider"] == "huawei_cloud"
    assert first["attributes"]["modelarts.training_job.id"] == JOB
    assert first["attributes"]["modelarts.log.offset"] == 0
    assert first["severity_number"] == 9
    error_event = next(r for r in kinds["events"] if r["body"] == "event 2")
    assert (error_event["severity_number"], error_event["severity_text"]) == (17, "Error")
    assert error_event["attributes"]["modelarts.event.source"] == "Task"
    assert kinds["updates"][0]["resource"]["service.name"] == "modelarts-inference"


async def test_through_loki_each_log_is_one_stream_and_nothing_is_over_the_limit(tmp_path: Path) -> None:
    sc, expected, update = scenario()
    task = sc.job(JOB).task("worker-0")
    long_line = "长" * 200_000  # 600,000 UTF-8 bytes: split into pieces Loki takes
    task.append(f"{long_line}\nafter the long line\n".encode())
    want_task = [*expected["task"], long_line, "after the long line"]
    with LokiSink() as sink, Simulator(sc) as sim:
        config = parse_config(
            receiver_config(sim, tmp_path, "http/protobuf", sink.endpoint), load_sources(), environ={}
        )
        receiver = build_receiver(config, load_sources(), environ={}, telemetry=False, jitter=False)
        stop = asyncio.Event()
        run = asyncio.create_task(receiver.run(stop))

        def running_seen(s: LokiSink) -> bool:
            return any(
                e.meta("modelarts_service_update_result") == "RUNNING"
                for e in streams_by(s.view, "service_instance_id").get(SERVICE, [])
            )

        await asyncio.to_thread(sink.wait_for, running_seen, "the update's RUNNING state")
        update.finish("SUCCESS")
        want = len(want_task) + 2 + len(expected["v1"]) + len(expected["events"]) + expected["updates"]  # +2: pieces
        await asyncio.to_thread(
            sink.wait_for, lambda s: s.view.entry_count + len(s.view.rejected) >= want, "every entry"
        )
        stop.set()
        assert await asyncio.wait_for(run, 30) is True
        view = sink.view
    instances = streams_by(view, "service_instance_id")
    assert set(instances) == {f"{JOB}/worker-0", "10/11/log1.log", f"{JOB}/events", SERVICE}
    assert {dict(labels)["service_name"] for labels in view.streams} == {"modelarts-training", "modelarts-inference"}
    assert view.rejected == [] and view.deduplicated == 0
    assert all(len(e.line.encode()) <= MAX_LINE_BYTES for entries in view.streams.values() for e in entries)
    task_entries = sorted(instances[f"{JOB}/worker-0"], key=lambda e: int(e.meta("modelarts_log_offset") or -1))
    joined: list[str] = []
    for e in task_entries:  # the pieces of a split line come back together in offset order
        if e.meta("modelarts_log_continued") == "true":
            joined[-1] += e.line
        else:
            joined.append(e.line)
    assert joined == want_task
    assert sum(e.meta("modelarts_log_continued") == "true" for e in task_entries) == 2
    assert [
        e.line for e in sorted(instances["10/11/log1.log"], key=lambda e: int(e.meta("modelarts_log_offset") or -1))
    ] == expected["v1"]
    assert sorted(e.line for e in instances[f"{JOB}/events"]) == sorted(expected["events"])
    assert sorted(e.meta("modelarts_service_update_result") or "" for e in instances[SERVICE]) == ["RUNNING", "SUCCESS"]
    stamps = [e.timestamp_ns for e in task_entries]
    assert stamps == sorted(stamps)
