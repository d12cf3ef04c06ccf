"""Crash safety of the real process: SIGKILL at random points, then SIGTERM.

After every restart the receiver resumes from its last committed cursors: every task-log line,
v1 line, event and service-update state arrives, duplicates come only from batches that were not
acknowledged before the kill, and whatever is sent twice carries the uid of its first copy. SIGTERM flushes, commits and exits 0, so a further
restart sends nothing again.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector_plugin.simulator import Scenario, Simulator

try:
    from rotel_harness import RotelCollector
except ImportError:  # pragma: no cover
    from tests.rotel_harness import RotelCollector

pytestmark = pytest.mark.e2e

JOB = "0a1b2c3d-c4a5-4000-8000-00000000dead"
SERVICE = "5e1f0000-c4a5-4000-8000-00000000beef"
V1_JOB = 4242
QUEUE = 2000
BATCH = 250
IN_FLIGHT = 2


def lines(start: int, n: int) -> bytes:
    return "".join(f"[INFO] line {i} 数据 {'z' * (i % 97)}\n" for i in range(start, start + n)).encode()


def write_config(path: Path, sim: Simulator, collector: RotelCollector, *, all_sources: bool = False) -> None:
    fast = {"poll_interval": "100ms", "max_poll_interval": "500ms"}
    sources: dict[str, Any] = {
        "training_task_logs": {**fast, "start_at": "beginning", "jobs": [{"id": JOB, "tasks": ["worker-0"]}]}
    }
    if all_sources:
        sources["training_job_logs_v1"] = {
            **fast,
            "start_at": "beginning",
            "jobs": [{"job_id": V1_JOB, "version_id": 1, "log_files": ["train.log"]}],
        }
        sources["training_job_events"] = {**fast, "jobs": [{"id": JOB}]}
        sources["service_update_logs"] = {**fast, "services": [{"id": SERVICE}]}
    config: dict[str, Any] = {
        "modelarts": {
            "region": "sim-1",
            "endpoint": sim.url,
            "project_id": sim.project_id,
            "auth": {"ak": sim.ak, "sk": sim.sk},
        },
        "sources": sources,
        "exporter": {
            "protocol": "grpc",
            "endpoint": collector.grpc_endpoint,
            "compression": "none",
            "queue_size": QUEUE,
            "max_in_flight": IN_FLIGHT,
            "batch": {"max_records": BATCH, "max_delay": "50ms"},
        },
        "checkpoint": {"path": str(path.parent / "checkpoints.db")},
        "telemetry": {"listen": "", "log_format": "json"},
        "shutdown": {"grace_period": "10s"},
    }
    path.write_text(yaml.safe_dump(config))


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "collector_plugin.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def line_offsets(data: bytes) -> dict[int, str]:
    out, pos = {}, 0
    for line in data.split(b"\n")[:-1]:
        out[pos] = line.decode()
        pos += len(line) + 1
    return out


def test_sigkill_at_random_points_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261201)
    scenario = Scenario()
    job = scenario.add_job(JOB, tasks=("worker-0",))
    task = job.task("worker-0")
    v1 = scenario.add_v1_job(V1_JOB, 1, {"train.log": lines(0, 300)})
    service = scenario.add_service(SERVICE, name="svc-crash", infer_type="real-time")
    task.append(lines(0, 4000))
    written = 4000
    base_ms = 1_700_000_000_000
    events = 0
    updates = [service.start_update(time_ms=base_ms)]
    collector = RotelCollector(tmp_path / "rotel")
    collector.start()
    kills = 4
    try:
        with Simulator(scenario) as sim:
            config = tmp_path / "config.yaml"
            write_config(config, sim, collector, all_sources=True)
            log = tmp_path / "receiver.log"
            for kill in range(kills):
                proc = start(config, log)
                time.sleep(rng.uniform(1.2, 3.0))
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                # Between runs everything moves on: lines, v1 lines, events (some sharing a
                # timestamp), and the service's update history.
                task.append(lines(written, 1500))
                written += 1500
                v1.append("train.log", lines(1000 * (kill + 1), 100))
                for _ in range(25):
                    job.add_event(f"event {events}", level="Info", source="Job", time_ms=base_ms + (events // 4) * 1000)
                    events += 1
                updates[-1].finish("SUCCESS" if kill % 2 == 0 else "FAIL")
                updates.append(service.start_update(time_ms=base_ms + (kill + 1) * 60_000))
            proc = start(config, log)
            v1_lines = line_offsets(v1.file("train.log").data)
            states = 2 * (len(updates) - 1) + 1
            received = collector.records(wait_for=written + len(v1_lines) + events + states, timeout=60)
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
            before_restart = len(collector.records())
            # Everything was committed on SIGTERM: a restart re-sends nothing.
            proc = start(config, log)
            time.sleep(3.0)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            received = collector.records()
    finally:
        collector.stop()

    assert len(received) == before_restart
    by_kind: dict[str, dict[Any, set[tuple[str, str]]]] = defaultdict(lambda: defaultdict(set))
    for record in received:
        attrs = record["attributes"]
        if "modelarts.task.id" in attrs:
            key: tuple[str, Any] = ("task", attrs["modelarts.log.offset"])
        elif "log.file.name" in attrs:
            key = ("v1", attrs["modelarts.log.offset"])
        elif record["event_name"] == "modelarts.training_job.event":
            key = ("event", record["body"])
        else:
            key = ("update", (attrs["modelarts.service.update.time"], attrs["modelarts.service.update.result"]))
        by_kind[key[0]][key[1]].add((str(record["body"]), attrs["log.record.uid"]))

    # Every line, event and state is there; each copy of one carries the same uid and body.
    assert {o: next(iter(c))[0] for o, c in by_kind["task"].items()} == line_offsets(task.data)
    assert {o: next(iter(c))[0] for o, c in by_kind["v1"].items()} == v1_lines
    assert set(by_kind["event"]) == {f"event {i}" for i in range(events)}
    expected_states = {(u.update_time, u.result) for u in updates[:-1]} | {(u.update_time, "RUNNING") for u in updates}
    assert set(by_kind["update"]) == expected_states
    for kind, copies in by_kind.items():
        for identity, seen in copies.items():
            assert len(seen) == 1, f"{kind} {identity!r}: a duplicate differs from its first copy"
    distinct = sum(len(c) for c in by_kind.values())
    duplicates = len(received) - distinct
    # Only what was queued or in flight (not acknowledged) at each kill can be sent again.
    assert duplicates <= kills * (QUEUE + IN_FLIGHT * BATCH)
    assert "Traceback" not in log.read_text()
