"""Crash safety of the real process: SIGKILL at random points, then SIGTERM.

After every restart the receiver resumes from its last committed cursor: every line arrives,
duplicates come only from batches that were not acknowledged before the kill, and a line sent
twice carries the uid of its first copy. SIGTERM flushes, commits and exits 0, so a further
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
QUEUE = 2000
BATCH = 250
IN_FLIGHT = 2


def lines(start: int, n: int) -> bytes:
    return "".join(f"[INFO] line {i} 数据 {'z' * (i % 97)}\n" for i in range(start, start + n)).encode()


def write_config(path: Path, sim: Simulator, collector: RotelCollector) -> None:
    config: dict[str, Any] = {
        "modelarts": {
            "region": "sim-1",
            "endpoint": sim.url,
            "project_id": sim.project_id,
            "auth": {"ak": sim.ak, "sk": sim.sk},
        },
        "sources": {
            "training_task_logs": {
                "poll_interval": "100ms",
                "max_poll_interval": "500ms",
                "start_at": "beginning",
                "jobs": [{"id": JOB, "tasks": ["worker-0"]}],
            }
        },
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


def test_sigkill_at_random_points_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261201)
    scenario = Scenario()
    task = scenario.add_job(JOB, tasks=("worker-0",)).task("worker-0")
    written = 0
    task.append(lines(0, 4000))
    written = 4000
    collector = RotelCollector(tmp_path / "rotel")
    collector.start()
    kills = 4
    try:
        with Simulator(scenario) as sim:
            config = tmp_path / "config.yaml"
            write_config(config, sim, collector)
            log = tmp_path / "receiver.log"
            for _ in range(kills):
                proc = start(config, log)
                time.sleep(rng.uniform(1.2, 3.0))
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                task.append(lines(written, 1500))
                written += 1500
            proc = start(config, log)
            received = collector.records(wait_for=written, timeout=60)
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
    copies: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in received:
        copies[record["attributes"]["modelarts.log.offset"]].append(record)
    expected = task.data.split(b"\n")[:-1]
    offsets, pos = [], 0
    for line in expected:
        offsets.append(pos)
        pos += len(line) + 1
    assert sorted(copies) == offsets, "a line is missing (or an unknown one arrived)"
    for offset, line in zip(offsets, expected, strict=True):
        bodies = {c["body"] for c in copies[offset]}
        uids = {c["attributes"]["log.record.uid"] for c in copies[offset]}
        assert bodies == {line.decode()}
        assert len(uids) == 1, "a duplicate carries a different uid than its first copy"
    duplicates = len(received) - len(offsets)
    # Only what was queued or in flight (not acknowledged) at each kill can be sent again.
    assert duplicates <= kills * (QUEUE + IN_FLIGHT * BATCH)
    assert "Traceback" not in log.read_text()
