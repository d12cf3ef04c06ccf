"""Crash safety as Loki shows it: SIGKILL while Loki stored a batch but had not acknowledged it.

The real CLI runs against the simulator and the Loki stand-in (tests/loki_sink.py), which stores
every request at once but holds its answer. Each run is killed with SIGKILL once a batch is
stored and unanswered, so the next run sends it again; in between, every log moves on. After
several kills and a last clean run, Loki's view holds every line, event and service-update state
exactly once — the replays were byte-identical (read-time journal, uids) and Loki collapsed them —
each log is its own stream, and within a log timestamps never decrease in offset order.

No step waits a fixed time: each kill waits for conditions at the sink (the service's current
RUNNING state stored, then a request held); the end waits until everything is in the view.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from loki_sink import Entry, LokiSink, LokiView, streams_by
from receiver_process import line_offsets, start_receiver

from collector_plugin.simulator import Scenario, Simulator

pytestmark = pytest.mark.e2e

JOB = "0a1b2c3d-10c1-4000-8000-00000000dead"
SERVICE = "5e1f0000-10c1-4000-8000-00000000beef"
V1_JOB = 4343
BATCH = 200
GUARD = 60.0  # seconds: only against a hang, never expected to be reached
TASK_STREAM, V1_STREAM, EVENT_STREAM = f"{JOB}/worker-0", f"{V1_JOB}/1/train.log", f"{JOB}/events"
KILLS = 4


def lines(start: int, n: int) -> bytes:
    return "".join(f"[INFO] line {i} 数据 {'z' * (i % 89)}\n" for i in range(start, start + n)).encode()


def write_config(path: Path, sim: Simulator, sink: LokiSink) -> None:
    fast = {"poll_interval": "100ms", "max_poll_interval": "500ms"}
    config: dict[str, Any] = {
        "modelarts": {
            "region": "sim-1",
            "endpoint": sim.url,
            "project_id": sim.project_id,
            "auth": {"ak": sim.ak, "sk": sim.sk},
        },
        "sources": {
            "training_task_logs": {**fast, "start_at": "beginning", "jobs": [{"id": JOB, "tasks": ["worker-0"]}]},
            "training_job_logs_v1": {
                **fast,
                "start_at": "beginning",
                "jobs": [{"job_id": V1_JOB, "version_id": 1, "log_files": ["train.log"]}],
            },
            "training_job_events": {**fast, "jobs": [{"id": JOB}]},
            "service_update_logs": {**fast, "services": [{"id": SERVICE}]},
        },
        "exporter": {
            "protocol": "http/protobuf",
            "endpoint": sink.endpoint,
            "compression": "none",
            "max_in_flight": 2,
            "batch": {"max_records": BATCH, "max_delay": "50ms"},
            "retry_max_backoff": "500ms",
        },
        "checkpoint": {"path": str(path.parent / "checkpoints.db")},
        "telemetry": {"listen": "", "log_format": "json"},
        "shutdown": {"grace_period": "10s"},
    }
    path.write_text(yaml.safe_dump(config))


def stream(view: LokiView, instance: str) -> list[Entry]:
    return streams_by(view, "service_instance_id").get(instance, [])


def offsets(entries: list[Entry]) -> Counter[int]:
    return Counter(int(e.meta("modelarts_log_offset") or -1) for e in entries if e.meta("event_name") is None)


def states(view: LokiView) -> Counter[tuple[int, str]]:
    return Counter(
        (int(e.meta("modelarts_service_update_time") or 0), str(e.meta("modelarts_service_update_result")))
        for e in stream(view, SERVICE)
    )


def alive(proc: subprocess.Popen[bytes], log: Path) -> None:
    assert proc.poll() is None, f"the receiver exited ({proc.returncode}): {log.read_text()[-3000:]}"


def test_sigkill_while_loki_holds_acknowledgements_leaves_every_entry_once(tmp_path: Path) -> None:
    rng = random.Random(20261202)
    scenario = Scenario()
    job = scenario.add_job(JOB, tasks=("worker-0",))
    task = job.task("worker-0")
    v1 = scenario.add_v1_job(V1_JOB, 1, {"train.log": lines(0, 200)})
    service = scenario.add_service(SERVICE, name="svc-loki", infer_type="real-time")
    task.append(lines(0, 1500))
    written, events = 1500, 0
    base_ms = 1_700_000_000_000
    updates = [service.start_update(time_ms=base_ms)]
    for text in ("pulled image", "pulled image"):  # two identical events at one second stay two
        job.add_event(text, level="Info", source="K8s", time_ms=base_ms)
    log = tmp_path / "receiver.log"
    with LokiSink() as sink, Simulator(scenario) as sim:
        config = tmp_path / "config.yaml"
        write_config(config, sim, sink)
        for kill in range(KILLS):
            proc = start_receiver(config, log)
            try:
                running = (updates[-1].update_time, "RUNNING")
                # Only this run can see the current update RUNNING: it must be stored first.
                sink.wait_for(
                    lambda s, want=running, p=proc: states(s.view)[want] > 0 or p.poll() is not None, "RUNNING"
                )
                alive(proc, log)
                # Then hold the answer of a later request (0-2 more are acknowledged first), give
                # the run something to send, and kill it once a request is stored, unanswered.
                sink.hold(after=rng.randint(0, 2))
                task.append(lines(written, 800))
                written += 800
                sink.wait_for(
                    lambda s, p=proc: s.held > 0 or p.poll() is not None, f"a held request before kill {kill}"
                )
                alive(proc, log)
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                sink.release()
            v1.append("train.log", lines(1000 * (kill + 1), 60))
            for _ in range(12):
                job.add_event(f"event {events}", level="Warning", source="Job", time_ms=base_ms + (events // 3) * 1000)
                events += 1
            updates[-1].finish("SUCCESS" if kill % 2 == 0 else "FAIL")
            updates.append(service.start_update(time_ms=base_ms + (kill + 1) * 60_000))

        task_lines = line_offsets(task.data)
        v1_lines = line_offsets(v1.file("train.log").data)
        want_states = {(u.update_time, u.result) for u in updates[:-1]} | {(u.update_time, "RUNNING") for u in updates}

        def everything_in_loki(s: LokiSink) -> bool:
            view = s.view
            return (
                set(task_lines) <= set(offsets(stream(view, TASK_STREAM)))
                and set(v1_lines) <= set(offsets(stream(view, V1_STREAM)))
                and len(stream(view, EVENT_STREAM)) >= events + 2
                and want_states <= set(states(view))
            )

        proc = start_receiver(config, log)
        try:
            sink.wait_for(lambda s: everything_in_loki(s) or proc.poll() is not None, "everything in Loki", GUARD)
            alive(proc, log)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        assert code == 0, log.read_text()[-3000:]
        view = sink.view
        counts = sink.snapshot()

    # Each log is one stream of its own, labelled only by Loki's default list.
    by_instance = streams_by(view, "service_instance_id")
    assert set(by_instance) == {TASK_STREAM, V1_STREAM, EVENT_STREAM, SERVICE}, counts
    for labels in view.streams:
        assert {k for k, _ in labels} == {"service_name", "service_instance_id", "cloud_region"}
    # Every line, event and state exactly once: a replay that differed in a single byte of
    # timestamp, line or metadata would be a second entry here.
    task_entries, v1_entries = stream(view, TASK_STREAM), stream(view, V1_STREAM)
    assert offsets(task_entries) == Counter(list(task_lines)), counts
    assert {int(e.meta("modelarts_log_offset") or -1): e.line for e in task_entries} == task_lines
    assert offsets(v1_entries) == Counter(list(v1_lines))
    assert {int(e.meta("modelarts_log_offset") or -1): e.line for e in v1_entries} == v1_lines
    assert Counter(e.line for e in stream(view, EVENT_STREAM)) == Counter(
        {"pulled image": 2, **{f"event {i}": 1 for i in range(events)}}
    )
    assert states(view) == Counter(want_states)
    # Within a log, timestamps never decrease in offset order.
    for entries in (task_entries, v1_entries):
        by_offset = sorted(entries, key=lambda e: int(e.meta("modelarts_log_offset") or -1))
        stamps = [e.timestamp_ns for e in by_offset]
        assert stamps == sorted(stamps)
    # Replays did happen, and Loki collapsed them; nothing was over Loki's limits.
    assert view.deduplicated > 0, counts
    assert view.received == view.entry_count + view.deduplicated
    assert view.rejected == []
    assert "Traceback" not in log.read_text()
