"""Crash safety of the real process: SIGKILL at random points, then SIGTERM.

After every restart the receiver resumes from its last committed cursors: every task-log line,
v1 line, event and service-update state arrives, duplicates come only from batches that were not
acknowledged before the kill, and whatever is sent twice carries the uid of its first copy. SIGTERM
flushes, commits and exits 0, so a further restart sends nothing again.

No step waits a fixed time: a kill comes once the run has delivered what only it can see (the
service's current RUNNING state, gone once the update finishes) and then made a random number of
further API calls; the end waits for every line, event and state to be at the collector.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector_plugin.simulator import Scenario, Simulator
from collector_plugin.simulator.server import EVENTS, OBS_OBJECT, PREVIEW, SERVICE_LOGS, V1_LOG

try:
    from receiver_process import line_offsets, start_receiver, wait_until
    from rotel_harness import RotelCollector
except ImportError:  # pragma: no cover
    from tests.receiver_process import line_offsets, start_receiver, wait_until
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
    # Idle targets back off only to 150 ms: kills come after a number of API calls, and idle
    # calls (the caught-up tail) are most of them, so this is how long the wait for one is.
    fast = {"poll_interval": "100ms", "max_poll_interval": "150ms"}
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


def kill_after_random_progress(
    proc: subprocess.Popen[bytes],
    sim: Simulator,
    rng: random.Random,
    most: int,
    *,
    least: int = 0,
    since: int | None = None,
) -> None:
    """SIGKILL once the receiver made ``least``..``most`` API calls after ``since`` (default: now).

    A random point of the receiver's own progress, whatever the machine's speed.
    """
    mark = (sim.count() if since is None else since) + rng.randint(least, most)
    wait_until(lambda: sim.count() >= mark or proc.poll() is not None, f"{mark} API calls")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def delivered(collector: RotelCollector, state: tuple[int, str], proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    """True once the collector holds that update state (or the receiver died: the caller says so)."""
    return lambda: state in classify(collector.records())["update"] or proc.poll() is not None


def stop_cleanly(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]


def settled_records(collector: RotelCollector) -> list[dict[str, Any]]:
    """Everything the collector acknowledged: rotel prints what it queued before it stops."""
    collector.stop()
    received = collector.records()
    collector.start()
    return received


def classify(received: list[dict[str, Any]]) -> dict[str, dict[Any, set[tuple[str, str]]]]:
    """Records by kind and identity (task/v1 offset, event body, update state): (body, uid) seen."""
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
    return by_kind


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
                current = (updates[-1].update_time, "RUNNING")
                proc = start_receiver(config, log)
                # Only this run can see the current update RUNNING: kill once it is delivered.
                wait_until(delivered(collector, current, proc), f"the RUNNING state of update {kill}")
                assert proc.poll() is None, log.read_text()[-3000:]
                kill_after_random_progress(proc, sim, rng, most=40)
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
            proc = start_receiver(config, log)
            v1_lines = line_offsets(v1.file("train.log").data)
            task_lines = line_offsets(task.data)
            states = {(u.update_time, u.result) for u in updates[:-1]} | {(u.update_time, "RUNNING") for u in updates}

            def everything_arrived() -> bool:
                seen = classify(collector.records())
                return (
                    set(task_lines) <= set(seen["task"])
                    and set(v1_lines) <= set(seen["v1"])
                    and len(seen["event"]) >= events
                    and states <= set(seen["update"])
                )

            wait_until(everything_arrived, "every line, event and state after the last kill")
            stop_cleanly(proc, log)
            before_restart = len(settled_records(collector))
            # Everything was committed on SIGTERM: a restart re-sends nothing, though every source
            # polls (each endpoint answered twice: the first answer was handled in full).
            sim.reset_requests()
            proc = start_receiver(config, log)
            wait_until(
                lambda: (
                    all(sim.count(e) >= 2 for e in (V1_LOG, EVENTS, SERVICE_LOGS))
                    and sim.count(PREVIEW) + sim.count(OBS_OBJECT) >= 2
                ),
                "every source to poll after the restart",
            )
            stop_cleanly(proc, log)
            received = settled_records(collector)
    finally:
        collector.stop()

    assert len(received) == before_restart
    by_kind = classify(received)

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
