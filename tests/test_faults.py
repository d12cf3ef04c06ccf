"""The fault suite: the receiver under a collector that goes away, an API that throttles, fails,
stalls and resets, and a checkpoint store that is corrupt, read-only or runs out of disk.

Each case runs the whole receiver (``build_receiver``) against the simulator; what was exported
is compared line by line with what the simulator served: nothing lost, every line once (or,
after a restart, again with the same ``log.record.uid``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from collector_plugin.config import Config, parse_config
from collector_plugin.errors import CheckpointError
from collector_plugin.export import RetryableExportError
from collector_plugin.plugins import load_sources
from collector_plugin.receiver import Receiver, build_receiver
from collector_plugin.simulator import Scenario, Simulator
from collector_plugin.simulator.scenario import TaskLog
from collector_plugin.simulator.server import OBS_OBJECT, PREVIEW
from collector_plugin.testing import MemoryTransport

try:
    from receiver_process import start_receiver, wait_until
    from rotel_harness import RotelCollector
    from telemetry_helpers import parse_metrics, total
except ImportError:  # pragma: no cover
    from tests.receiver_process import start_receiver, wait_until
    from tests.rotel_harness import RotelCollector
    from tests.telemetry_helpers import parse_metrics, total

JOB = "0a1b2c3d-fa01-4000-8000-00000000fa01"
SERVICE = "5e1f0000-fa01-4000-8000-00000000fa02"
PREFIX = "modelarts_receiver_"


def lines(start: int, n: int, tag: str = "line") -> bytes:
    return "".join(f"[INFO] {tag} {i} 数据 {'z' * (i % 53)}\n" for i in range(start, start + n)).encode()


def served_lines(log: TaskLog) -> list[tuple[int, str]]:
    """(byte offset, text) of every complete line of ``log``."""
    out, pos = [], 0
    for raw in log.data.split(b"\n")[:-1]:
        out.append((pos, raw.rstrip(b"\r").decode()))
        pos += len(raw) + 1
    return out


def task_records(transport: MemoryTransport) -> list[dict[str, Any]]:
    return [r for r in transport.records if "modelarts.task.id" in r["attributes"]]


def exported_lines(transport: MemoryTransport) -> list[tuple[int, str]]:
    return [(r["attributes"]["modelarts.log.offset"], r["body"]) for r in task_records(transport)]


def config_for(sim: Simulator, tmp: Path, **overrides: Any) -> Config:
    fast = {"poll_interval": "100ms", "max_poll_interval": "400ms"}
    raw: dict[str, Any] = {
        "modelarts": {
            "region": "sim-1",
            "endpoint": sim.url,
            "project_id": sim.project_id,
            "auth": {"ak": sim.ak, "sk": sim.sk},
            "retry": {"max_attempts": 3, "initial_backoff": "20ms", "max_backoff": "100ms"},
            "rate_limit": {"requests_per_second": 200, "burst": 200},
        },
        "sources": {
            "training_task_logs": {**fast, "start_at": "beginning", "jobs": [{"id": JOB, "tasks": ["worker-0"]}]},
            "training_job_events": {**fast, "jobs": [{"id": JOB}]},
            "service_update_logs": {**fast, "services": [{"id": SERVICE}]},
        },
        "exporter": {
            "batch": {"max_records": 100, "max_delay": "20ms"},
            "queue_size": 300,
            "retry_initial_backoff": "10ms",
            "retry_max_backoff": "50ms",
        },
        "checkpoint": {"path": str(tmp / "cp.db")},
        "telemetry": {"listen": ""},
        "shutdown": {"grace_period": "5s"},
    }
    for key, value in overrides.items():
        raw[key] = value
    return parse_config(raw, load_sources(), environ={})


def scenario(n_lines: int = 800, events: int = 30) -> tuple[Scenario, TaskLog]:
    sc = Scenario()
    job = sc.add_job(JOB, name="fault-job", tasks=("worker-0",))
    log = job.task("worker-0")
    log.append(lines(0, n_lines))
    for i in range(events):
        job.add_event(f"fault event {i}", time_ms=1_700_000_000_000 + i * 1000)
    service = sc.add_service(SERVICE, name="fault-svc", infer_type="real-time")
    service.start_update(time_ms=1_700_000_000_000).finish("SUCCESS")
    return sc, log


def metric(receiver: Receiver, name: str, **labels: str) -> float:
    return total(parse_metrics(generate_latest(receiver.metrics.registry).decode()), PREFIX + name, **labels)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def assert_each_line_once(transport: MemoryTransport, log: TaskLog) -> None:
    got = exported_lines(transport)
    assert sorted(got) == served_lines(log), "a line is missing, altered or was exported twice"


class DownTransport(MemoryTransport):
    """A collector that refuses connections while ``down`` is set (the receiver must retry)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused = 0

    async def send(self, payload: bytes, nrecords: int) -> int:
        if self.down:
            self.attempts += 1
            self.refused += 1
            raise RetryableExportError("connection", "connection refused (test)")
        return await super().send(payload, nrecords)


async def test_collector_unreachable_then_back_loses_nothing_and_memory_stays_bounded(tmp_path: Path) -> None:
    sc, log = scenario(n_lines=200)
    transport = DownTransport()
    with Simulator(sc) as sim:
        config = config_for(sim, tmp_path)
        receiver = build_receiver(
            config, load_sources(), environ={}, transport=transport, telemetry=False, jitter=False
        )
        stop = asyncio.Event()
        run = asyncio.create_task(receiver.run(stop))
        await until(lambda: len(task_records(transport)) >= 200, 15, "the first lines")
        transport.down = True
        held: list[int] = []
        # The collector stays away while the job writes far more than the queue holds.
        for i in range(10):
            log.append(lines(200 + i * 200, 200))
            for _ in range(6):
                held.append(receiver.pipeline.queued_records)
                await asyncio.sleep(0.05)
        # Backpressure engaged: the queue cannot take another 200-line append and exports fail.
        room = config.exporter.queue_size - 200
        await until(lambda: receiver.pipeline.queued_records > room, 20, "the queue to fill during the outage")
        await until(lambda: transport.refused > 0, 20, "an export to be refused")
        held.append(receiver.pipeline.queued_records)
        # Watch polling over ten more refused exports (a span of the receiver's own time, not ours).
        reads_during_outage = reads(sim)
        refused = transport.refused
        await until(lambda: transport.refused >= refused + 10, 20, "ten more export retries")
        reads_later = reads(sim)
        assert transport.refused > 0
        assert receiver.ready()[0] is False, "readiness must show the failing export"
        transport.down = False
        await until(lambda: len(task_records(transport)) >= 2200, 20, "every line after the collector came back")
        stop.set()
        assert await asyncio.wait_for(run, 20) is True

    assert_each_line_once(transport, log)
    # Backpressure, not buffering: what is held never exceeds the queue plus one span (here one
    # 200-line append), and a reader blocked on the full queue stops polling instead of reading on.
    assert max(held) <= config.exporter.queue_size + 200, max(held)
    assert reads_later - reads_during_outage <= 2
    assert metric(receiver, "export_failures_total", reason="connection") > 0
    assert metric(receiver, "records_exported_total") >= 2200


async def test_api_storms_slow_the_receiver_but_every_target_keeps_going(tmp_path: Path) -> None:
    sc, log = scenario(n_lines=300, events=40)
    transport = MemoryTransport()
    with Simulator(sc) as sim:
        faults = sim.faults
        # A caught-up task log is tailed over OBS: the storm hits the API's log endpoints and OBS.
        faults.throttle(r"/logs/(preview|url)$", retry_after=1, times=4)
        faults.error(r"/events$", status=503, times=5)
        faults.error(r"/services/[^/]+/logs$", status=502, times=3)
        faults.slow(r"/obs/", 0.4, times=3)
        faults.reset(r"/obs/", times=3)
        faults.reset(r"/events$", times=2)
        config = config_for(sim, tmp_path)
        receiver = build_receiver(
            config, load_sources(), environ={}, transport=transport, telemetry=False, jitter=False
        )
        stop = asyncio.Event()
        run = asyncio.create_task(receiver.run(stop))
        await until(lambda: reads(sim) >= 1, 20, "the first task log read")
        log.append(lines(300, 300, "later"))
        await until(lambda: faults.pending == 0, 30, "every injected fault to be met")
        log.append(lines(600, 100, "after"))
        sc.job(JOB).add_event("late event", time_ms=1_700_000_100_000)
        await until(lambda: len(task_records(transport)) >= 700, 30, "every line despite the storm")
        await until(
            lambda: sum(r["event_name"] == "modelarts.training_job.event" for r in transport.records) >= 41,
            30,
            "every event despite the storm",
        )
        await until(
            lambda: any(r["event_name"] == "modelarts.service.update" for r in transport.records), 30, "the update"
        )
        active = dict(receiver.scheduler.active_targets)
        stop.set()
        assert await asyncio.wait_for(run, 20) is True

    assert_each_line_once(transport, log)
    events = [r["body"] for r in transport.records if r["event_name"] == "modelarts.training_job.event"]
    assert sorted(events) == sorted([f"fault event {i}" for i in range(40)] + ["late event"])
    assert active == {"training_task_logs": 1, "training_job_events": 1, "service_update_logs": 1}
    # The metrics show the throttling and the retries.
    assert metric(receiver, "throttle_wait_seconds_total") >= 1.0
    assert metric(receiver, "api_retries_total") >= 10
    assert metric(receiver, "api_errors_total", error_code="APIG.0308") >= 4


async def test_malformed_answers_are_errors_and_the_target_recovers(tmp_path: Path) -> None:
    sc, log = scenario(n_lines=150)
    transport = MemoryTransport()
    with Simulator(sc) as sim:
        sim.faults.malformed(r"/logs/preview$", times=3)
        sim.faults.malformed(r"/events$", body=b'{"events": "not a list"}', times=2)
        sim.faults.malformed(r"/services/[^/]+/logs$", body=b'{"logs": [{"update_time": []}]}', times=2)
        config = config_for(sim, tmp_path)
        receiver = build_receiver(
            config, load_sources(), environ={}, transport=transport, telemetry=False, jitter=False
        )
        stop = asyncio.Event()
        run = asyncio.create_task(receiver.run(stop))
        await until(lambda: len(task_records(transport)) >= 150, 20, "the lines after the bad answers")
        await until(
            lambda: any(r["event_name"] == "modelarts.service.update" for r in transport.records), 20, "the update"
        )
        await until(
            lambda: sum(r["event_name"] == "modelarts.training_job.event" for r in transport.records) >= 30,
            20,
            "events",
        )
        stop.set()
        assert await asyncio.wait_for(run, 20) is True
    assert_each_line_once(transport, log)
    assert metric(receiver, "target_errors_total", error="ResponseFormatError") >= 3


# --- checkpoint faults ---------------------------------------------------------------------------


def test_corrupt_checkpoint_file_is_a_clear_startup_error(tmp_path: Path) -> None:
    sc, _ = scenario(n_lines=10)
    (tmp_path / "cp.db").write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    with Simulator(sc) as sim:
        config = config_for(sim, tmp_path)
        with pytest.raises(CheckpointError, match=r"cp\.db") as info:
            build_receiver(config, load_sources(), environ={}, transport=MemoryTransport(), telemetry=False)
    assert "corrupt" in str(info.value) or "not a readable checkpoint store" in str(info.value)
    assert (tmp_path / "cp.db").read_bytes().startswith(b"SQLite format 3"), "the file was left as it was"


def test_corrupt_checkpoint_file_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    sc, _ = scenario(n_lines=10)
    (tmp_path / "cp.db").write_bytes(os.urandom(8192))
    with Simulator(sc) as sim:
        path = write_cli_config(tmp_path, sim, "http://127.0.0.1:9/v1/logs")
        result = subprocess.run(
            [sys.executable, "-m", "collector_plugin.cli", "run", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "cp.db" in result.stderr


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i``: read-only even for root (who ignores file modes)."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def test_read_only_checkpoint_file_is_a_clear_startup_error(tmp_path: Path) -> None:
    sc, _ = scenario(n_lines=10)
    with Simulator(sc) as sim:
        config = config_for(sim, tmp_path)
        receiver = build_receiver(config, load_sources(), environ={}, transport=MemoryTransport(), telemetry=False)
        receiver.store.commit({"training_task_logs/x/worker-0": '{"offset": 5, "continued": false, "epoch": 0}'})
        receiver.store.close()
        asyncio.run(receiver.http.aclose())
        for leftover in ("cp.db-wal", "cp.db-shm"):
            (tmp_path / leftover).unlink(missing_ok=True)
        if os.geteuid() != 0:
            (tmp_path / "cp.db").chmod(0o444)
            ctx: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        else:
            ctx = immutable(tmp_path / "cp.db")
        with ctx, pytest.raises(CheckpointError, match=r"cp\.db") as info:
            build_receiver(config, load_sources(), environ={}, transport=MemoryTransport(), telemetry=False)
    assert "writ" in str(info.value) or "read" in str(info.value)


def write_cli_config(tmp: Path, sim: Simulator, endpoint: str, **exporter: Any) -> Path:
    config = {
        "modelarts": {
            "region": "sim-1",
            "endpoint": sim.url,
            "project_id": sim.project_id,
            "auth": {"ak": sim.ak, "sk": sim.sk},
        },
        "sources": {
            "training_task_logs": {
                # 50 ms: the full-disk test waits for two reads after each of its 30 appends.
                "poll_interval": "50ms",
                "max_poll_interval": "400ms",
                "start_at": "beginning",
                "jobs": [{"id": JOB, "tasks": ["worker-0"]}],
            }
        },
        "exporter": {
            "protocol": "grpc",
            "endpoint": endpoint,
            "compression": "none",
            "batch": {"max_records": 50, "max_delay": "20ms"},
            "retry_max_backoff": "200ms",
            **exporter,
        },
        "checkpoint": {"path": str(tmp / "cp.db")},
        "telemetry": {"listen": "", "log_format": "json"},
        "shutdown": {"grace_period": "2s"},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Drained(list[bytes]):
    """A child's output, read in a thread (a full pipe would stall it); fills as it reads."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
            self.append(chunk)

    def text(self, timeout: float = 30) -> str:
        """All of it, once the child closed its end (call after it exited)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the child's output did not end"
        return b"".join(self).decode(errors="replace")


def drain(proc: subprocess.Popen[bytes]) -> Drained:
    return Drained(proc)


def distinct_offsets(collector: RotelCollector) -> set[int]:
    return {r["attributes"]["modelarts.log.offset"] for r in collector.records()}


def reads(sim: Simulator) -> int:
    """Task log reads so far: previews and OBS downloads."""
    return sim.count(PREVIEW) + sim.count(OBS_OBJECT)


def read_past(sim: Simulator, mark: int, proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    """True once the receiver made ``mark`` task log reads (or exited: its output says why)."""
    return lambda: reads(sim) >= mark or proc.poll() is not None


def _small_disk() -> None:
    """In the child: a file-size limit makes every write past 96 KiB fail, as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (96 * 1024, 96 * 1024))


@pytest.mark.e2e
def test_full_disk_is_reported_and_nothing_is_lost(tmp_path: Path) -> None:
    sc, log = scenario(n_lines=600)
    collector = RotelCollector(tmp_path / "rotel")
    collector.start()
    try:
        with Simulator(sc) as sim:
            path = write_cli_config(tmp_path, sim, collector.grpc_endpoint)
            args = [sys.executable, "-m", "collector_plugin.cli", "run", "--config", str(path)]
            # The disk fills while the receiver runs: commits fail, records still flow.
            full = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_small_disk, start_new_session=True
            )
            output = drain(full)
            try:
                for i in range(30):
                    # Each append is read by a poll of its own, so there are many commits to fail.
                    seen = reads(sim)
                    log.append(lines(600 + i * 100, 100, "growing"))
                    wait_until(read_past(sim, seen + 2, full), "a read of the new lines")
                wanted = {offset for offset, _ in served_lines(log)}
                wait_until(lambda: wanted <= distinct_offsets(collector), "every line while the disk is full")
            finally:
                os.kill(full.pid, signal.SIGTERM)
                full.wait(timeout=30)
            text = output.text()
            assert "checkpoint commit failed" in text, text[-3000:]
            assert "disk" in text
            assert "Traceback" not in text
            # Space again: a restart resumes from the last cursor that was committed.
            log.append(lines(5000, 200, "after"))
            again = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            drain(again)
            try:
                wanted = {offset for offset, _ in served_lines(log)}
                wait_until(lambda: wanted <= distinct_offsets(collector), "every line after the restart")
            finally:
                os.kill(again.pid, signal.SIGTERM)
                assert again.wait(timeout=30) == 0
            collector.stop()  # rotel prints what it acknowledged before it exits
            received = collector.records()
    finally:
        collector.stop()
    by_offset: dict[int, set[tuple[str, str]]] = {}
    for record in received:
        attrs = record["attributes"]
        by_offset.setdefault(attrs["modelarts.log.offset"], set()).add((record["body"], attrs["log.record.uid"]))
    expected = served_lines(log)
    assert sorted(by_offset) == [offset for offset, _ in expected], "a line is missing"
    for offset, text in expected:
        assert len(by_offset[offset]) == 1, "a line sent again must carry the same body and uid"
        assert next(iter(by_offset[offset]))[0] == text


# --- SIGKILL, many times -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.e2e
def test_sigkill_many_times_loses_nothing(tmp_path: Path) -> None:
    """tests/test_crash.py kills 4 times; this kills 6 times at random points, soon after start
    included (before the first commit, mid-catch-up, while idle)."""
    try:
        import test_crash as crash
    except ImportError:  # pragma: no cover
        from tests import test_crash as crash

    rng = random.Random(77)
    sc = Scenario()
    task = sc.add_job(crash.JOB, tasks=("worker-0",)).task("worker-0")
    task.append(crash.lines(0, 3000))
    written = 3000
    collector = RotelCollector(tmp_path / "rotel")
    collector.start()
    try:
        with Simulator(sc) as sim:
            config = tmp_path / "config.yaml"
            crash.write_config(config, sim, collector)
            log = tmp_path / "receiver.log"
            for _ in range(6):
                before = sim.count()
                proc = start_receiver(config, log)
                # After 1..30 API calls of this run: the first ones come before any commit.
                crash.kill_after_random_progress(proc, sim, rng, most=30, least=1, since=before)
                task.append(crash.lines(written, 400))
                written += 400
            proc = start_receiver(config, log)
            wanted = {offset for offset, _ in served_lines(task)}
            wait_until(lambda: wanted <= distinct_offsets(collector), "every line after the last kill")
            crash.stop_cleanly(proc, log)
            collector.stop()  # rotel prints what it acknowledged before it exits
            received = collector.records()
    finally:
        collector.stop()
    by_offset: dict[int, set[tuple[str, str]]] = {}
    for record in received:
        attrs = record["attributes"]
        by_offset.setdefault(attrs["modelarts.log.offset"], set()).add((record["body"], attrs["log.record.uid"]))
    expected = served_lines(task)
    assert sorted(by_offset) == [offset for offset, _ in expected], "a line is missing"
    assert all(len(by_offset[offset]) == 1 and next(iter(by_offset[offset]))[0] == text for offset, text in expected)
    assert "Traceback" not in log.read_text()
