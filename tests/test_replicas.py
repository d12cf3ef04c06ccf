"""Several replicas of the real process sharing targets through a real PostgreSQL (issue 14).

Each replica is ``modelarts-receiver run`` with ``checkpoint.url`` on one database; all send to
one OTLP sink in the test process. A trigger the test installs on the ``cursors`` table records
every commit, so "no cursor ever moves backwards" is checked on what the database accepted, not
on what a replica believed. Nothing waits a fixed time: every step waits on a condition (leases in
the table, lines at the sink, ``/readyz`` answering) under a generous guard.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from collector_plugin.simulator import Scenario, Simulator
from collector_plugin.simulator.scenario import TrainingJob
from collector_plugin.sources.modelarts.endpoints import JOB_SEARCH
from collector_plugin.store.postgres import PostgresStore
from collector_plugin.telemetry import PREFIX

try:
    import receiver_process
    from otlp_sink import OtlpSink
    from pg_harness import PostgresServer
    from receiver_process import line_offsets, start_receiver
    from rotel_harness import free_port
except ImportError:  # pragma: no cover
    from tests import receiver_process
    from tests.otlp_sink import OtlpSink
    from tests.pg_harness import PostgresServer
    from tests.receiver_process import line_offsets, start_receiver
    from tests.rotel_harness import free_port

pytestmark = pytest.mark.e2e

TTL = 2.0  # seconds: short, so a takeover happens within the test's patience
GUARD = 90.0  # seconds: only against a hang; three replicas on a busy 2-core machine start slowly
TASK = "worker-0"

_HISTORY = """
CREATE TABLE cursor_history (
  id bigserial PRIMARY KEY, key text, old_cursor text, new_cursor text, old_token bigint, new_token bigint);
CREATE FUNCTION log_cursor() RETURNS trigger AS $$ BEGIN
  INSERT INTO cursor_history (key, old_cursor, new_cursor, old_token, new_token)
  VALUES (NEW.key, CASE WHEN TG_OP = 'UPDATE' THEN OLD.cursor END, NEW.cursor,
          CASE WHEN TG_OP = 'UPDATE' THEN OLD.token END, NEW.token);
  RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER cursor_history AFTER INSERT OR UPDATE ON cursors FOR EACH ROW EXECUTE FUNCTION log_cursor();
"""


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    receiver_process.wait_until(predicate, what, GUARD)


def prepare(server: PostgresServer) -> str:
    """A fresh database with the receiver's schema and the test's commit-history trigger."""
    url = server.url(server.create_database())
    PostgresStore.open(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_HISTORY)
    return url


def lines(job: int, start: int, n: int) -> bytes:
    return "".join(f"[INFO] job {job} step {i} loss={1 / (i + 1):.5f}\n" for i in range(start, start + n)).encode()


class Group:
    """The simulator's jobs, the replicas' processes and what the test wrote, for one test."""

    def __init__(self, tmp: Path, sim: Simulator, sink: OtlpSink, url: str, jobs: list[TrainingJob]) -> None:
        self.tmp, self.sim, self.sink, self.url, self.jobs = tmp, sim, sink, url, jobs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.written = [0] * len(jobs)

    def grow(self, n: int = 40) -> None:
        for i, job in enumerate(self.jobs):
            job.task(TASK).append(lines(i, self.written[i], n))
            self.written[i] += n
            job.add_event(f"job {i} grew to {self.written[i]} lines", level="Info", source="Job")

    def config(self, member: str) -> Path:
        fast = {"poll_interval": "100ms", "max_poll_interval": "300ms"}
        self.ports[member] = free_port()
        config = {
            "modelarts": {
                "region": "sim-1",
                "endpoint": self.sim.url,
                "project_id": self.sim.project_id,
                "auth": {"ak": self.sim.ak, "sk": self.sim.sk},
                # The default 20 calls/s is split among the replicas (6.7 each with three): the
                # leader's discovery rounds and the catch-up after a takeover would queue for it.
                "rate_limit": {"requests_per_second": 200, "burst": 200},
            },
            "sources": {
                "training_task_logs": {
                    **fast,
                    "start_at": "beginning",
                    "jobs": [{"id": job.id, "tasks": [TASK]} for job in self.jobs],
                    "discovery": {"enabled": True, "interval": "300ms"},  # finds the same jobs
                },
                "training_job_events": {**fast, "jobs": [{"id": job.id} for job in self.jobs]},
            },
            "exporter": {
                "protocol": "http/protobuf",
                "endpoint": self.sink.endpoint,
                "compression": "none",
                "batch": {"max_records": 200, "max_delay": "50ms"},
            },
            "checkpoint": {"url": self.url, "lease_ttl": f"{TTL}s", "member_id": member},
            "telemetry": {"listen": f"127.0.0.1:{self.ports[member]}", "log_format": "json"},
            "shutdown": {"grace_period": "10s"},
        }
        path = self.tmp / f"{member}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self, member: str) -> None:
        self.procs[member] = start_receiver(self.config(member), self.tmp / f"{member}.log")

    def signal(self, member: str, sig: signal.Signals) -> None:
        os.kill(self.procs[member].pid, sig)

    def kill(self, member: str) -> None:
        self.signal(member, signal.SIGKILL)
        self.procs.pop(member).wait(timeout=30)

    def terminate(self, member: str) -> None:
        self.signal(member, signal.SIGTERM)
        proc = self.procs.pop(member)
        assert proc.wait(timeout=60) == 0, self.log(member)

    def stop_all(self) -> None:
        for member, proc in list(self.procs.items()):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            self.procs.pop(member)

    def log(self, member: str) -> str:
        return (self.tmp / f"{member}.log").read_text(errors="replace")[-4000:]

    def alive(self) -> None:
        for member, proc in self.procs.items():
            assert proc.poll() is None, f"{member} exited with {proc.returncode}:\n{self.log(member)}"

    # -- what the database and the sink say

    def holders(self) -> Counter[str]:
        """Live leases per owner, among this test's targets."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute("SELECT owner FROM leases WHERE owner IS NOT NULL AND expires_at > now()").fetchall()
        return Counter(str(row[0]) for row in rows)

    def shares_are(self, members: set[str]) -> bool:
        """Every target leased, only by ``members``, each within one of the ideal share."""
        self.alive()
        held = self.holders()
        total = 2 * len(self.jobs)  # a task log and an event stream per job
        ideal = total / len(members)
        return set(held) == members and sum(held.values()) == total and all(abs(n - ideal) < 1 for n in held.values())

    def received(self) -> tuple[dict[tuple[str, int], set[str]], dict[tuple[str, str], set[str]]]:
        """Task-log lines by (job, offset) and events by (job, body): the distinct full copies of each."""
        lines_seen: dict[tuple[str, int], set[str]] = defaultdict(set)
        events_seen: dict[tuple[str, str], set[str]] = defaultdict(set)
        for record in self.sink.records():
            attrs = record["attributes"]
            job = str(attrs.get("modelarts.training_job.id") or record["resource"].get("modelarts.training_job.id"))
            copy = json.dumps(record, sort_keys=True, default=str)
            if "modelarts.log.offset" in attrs:
                lines_seen[(job, int(attrs["modelarts.log.offset"]))].add(copy)
            elif record["event_name"] == "modelarts.training_job.event":
                events_seen[(job, str(record["body"]))].add(copy)
        return lines_seen, events_seen

    def expected(self) -> tuple[set[tuple[str, int]], set[tuple[str, str]]]:
        offsets: set[tuple[str, int]] = set()
        events: set[tuple[str, str]] = set()
        for job in self.jobs:
            offsets |= {(job.id, pos) for pos in line_offsets(job.task(TASK).data)}
            events |= {(job.id, event.message) for event in job.events}
        return offsets, events

    def everything_arrived(self) -> bool:
        self.alive()
        want_lines, want_events = self.expected()
        got_lines, got_events = self.received()
        return want_lines <= got_lines.keys() and want_events <= got_events.keys()

    def check_delivery(self) -> int:
        """Every line and event is at the sink, each copy byte-identical to the first; the duplicates."""
        want_lines, want_events = self.expected()
        got_lines, got_events = self.received()
        assert set(got_lines) == want_lines
        assert set(got_events) == want_events
        for identity, copies in [*got_lines.items(), *got_events.items()]:
            assert len(copies) == 1, f"{identity}: copies sent again differ from the first: {sorted(copies)}"
        return len(self.sink.records()) - len(got_lines) - len(got_events)

    def check_cursors_never_moved_back(self) -> int:
        """Every commit the database accepted: tokens never go down, task-log offsets never back."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT key, old_cursor, new_cursor, old_token, new_token FROM cursor_history ORDER BY id"
            ).fetchall()
        for key, old, new, old_token, new_token in rows:
            if old is None:
                continue
            assert new_token >= old_token, f"{key}: a commit with token {new_token} landed after {old_token}"
            if key.startswith("training_task_logs/"):
                assert offset(new) >= offset(old), f"{key}: cursor moved back from {old} to {new}"
        return len(rows)

    def searches(self, member: str) -> float:
        """Job searches (discovery's API call) this replica made, from its own /metrics."""
        text = httpx.get(f"http://127.0.0.1:{self.ports[member]}/metrics", timeout=5).text
        wanted = f'{PREFIX}api_requests_total{{endpoint="{JOB_SEARCH}"'
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted))

    def ready(self, member: str) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.ports[member]}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


def offset(cursor: str) -> int:
    data: Any = json.loads(cursor)
    while isinstance(data, dict) and "offset" not in data:  # the codec's envelope
        data = next((v for v in data.values() if isinstance(v, dict)), None)
    assert isinstance(data, dict), cursor
    return int(data["offset"])


def group(tmp: Path, sim_scenario: Scenario, sim: Simulator, sink: OtlpSink, url: str, jobs: int) -> Group:
    made = [sim_scenario.add_job(f"0a1b2c3d-0000-4000-8000-{i:012d}", tasks=(TASK,)) for i in range(jobs)]
    g = Group(tmp, sim, sink, url, made)
    g.grow(200)
    return g


def test_replicas_share_the_targets_and_survive_scaling_and_sigkill(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """2 → 3 replicas (rebalanced), SIGKILL one (its targets resume on the others), SIGTERM one
    (it hands off at its committed cursor): every line and event arrives, copies are identical."""
    url = prepare(postgres_server)
    scenario = Scenario()
    with Simulator(scenario) as sim, OtlpSink() as sink:
        g = group(tmp_path, scenario, sim, sink, url, jobs=6)
        try:
            g.start("r1")
            g.start("r2")
            wait_until(lambda: g.shares_are({"r1", "r2"}), "two replicas holding 6 leases each")
            g.grow()
            g.start("r3")
            wait_until(lambda: g.shares_are({"r1", "r2", "r3"}), "a third replica taking its share")
            g.grow()
            wait_until(g.everything_arrived, "every line and event with three replicas")
            # Discovery runs once for the group: the leader (first member by name) searches, the
            # others read its listing from the database.
            before = {m: g.searches(m) for m in ("r1", "r2", "r3")}
            wait_until(lambda: g.searches("r1") >= before["r1"] + 5, "five searches by the leader")
            assert [g.searches(m) - before[m] for m in ("r2", "r3")] == [0, 0]
            g.kill("r2")
            g.grow()
            killed_at = time.monotonic()
            wait_until(lambda: g.shares_are({"r1", "r3"}), "r2's leases taken over by r1 and r3")
            wait_until(g.everything_arrived, "every line and event after the SIGKILL")
            print(f"takeover after SIGKILL and delivery: {time.monotonic() - killed_at:.1f}s (TTL {TTL}s)")
            g.terminate("r3")
            g.grow()
            wait_until(lambda: g.shares_are({"r1"}), "r1 holding every lease after r3 stopped")
            wait_until(g.everything_arrived, "every line and event with one replica")
            g.terminate("r1")
        finally:
            g.stop_all()
        duplicates = g.check_delivery()
        assert g.check_cursors_never_moved_back() > 0
    # Only the SIGKILL may cause copies (r2's unacknowledged batches); handoffs are at commits.
    assert duplicates <= 2 * 2000, duplicates
    for member in ("r1", "r3"):
        assert "Traceback" not in g.log(member)


def test_a_paused_replica_is_fenced_and_sends_nothing_stale(tmp_path: Path, postgres_server: PostgresServer) -> None:
    """SIGSTOP a replica past its lease: the other takes over; on SIGCONT the paused one stops
    reading, no stale commit lands, and what it sends is byte-identical to what the owner sent."""
    url = prepare(postgres_server)
    scenario = Scenario()
    with Simulator(scenario) as sim, OtlpSink() as sink:
        g = group(tmp_path, scenario, sim, sink, url, jobs=4)
        try:
            g.start("a")
            g.start("b")
            wait_until(lambda: g.shares_are({"a", "b"}), "two replicas sharing 8 leases")
            wait_until(g.everything_arrived, "the first lines and events")
            g.grow()
            g.signal("a", signal.SIGSTOP)
            g.grow()
            wait_until(lambda: g.holders() == Counter({"b": 8}), "b taking a's leases after they expired")
            wait_until(g.everything_arrived, "every line and event from b alone")
            g.grow()
            g.signal("a", signal.SIGCONT)
            wait_until(lambda: g.shares_are({"a", "b"}), "a taking its share back after it woke")
            g.grow()
            wait_until(g.everything_arrived, "every line and event after a woke")
            g.terminate("a")
            g.terminate("b")
        finally:
            g.stop_all()
        g.check_delivery()
        g.check_cursors_never_moved_back()
    assert "target leases were lost" in g.log("a")  # on waking it found its leases gone and said so


def test_postgres_restart_mid_run_loses_nothing(tmp_path: Path) -> None:
    """PostgreSQL stopped and started again: replicas stop reading and say so (/readyz), keep what
    they hold, resume when it is back; every line and event arrives."""
    server = PostgresServer()
    server.start()
    try:
        url = prepare(server)
        scenario = Scenario()
        with Simulator(scenario) as sim, OtlpSink() as sink:
            g = group(tmp_path, scenario, sim, sink, url, jobs=3)
            try:
                g.start("p")
                g.start("q")
                wait_until(lambda: g.shares_are({"p", "q"}), "two replicas sharing 6 leases")
                wait_until(lambda: g.ready("p") and g.ready("q"), "both replicas ready")
                g.grow()
                server.stop()
                g.grow()
                wait_until(lambda: not g.ready("p") and not g.ready("q"), "/readyz failing without the store")
                server.start()
                wait_until(lambda: g.ready("p") and g.ready("q"), "both replicas ready again")
                g.grow()
                wait_until(g.everything_arrived, "every line and event after the restart")
                g.terminate("p")
                g.terminate("q")
            finally:
                g.stop_all()
            g.check_delivery()
            g.check_cursors_never_moved_back()
        assert "checkpoint store unavailable" in g.log("p")
    finally:
        server.cleanup()


def test_listings_rebuild_every_builtin_target_and_nothing_from_elsewhere() -> None:
    """The group's listing: the leader's targets come back equal on a follower, and a row naming
    a class outside the source's own package is refused, never imported."""
    from collector_plugin.replicas import decode_targets, encode_targets
    from collector_plugin.sources.modelarts.events.source import EventsSource, JobTarget
    from collector_plugin.sources.modelarts.job_logs_v1 import V1LogTarget
    from collector_plugin.sources.modelarts.service_updates import ServiceTarget
    from collector_plugin.sources.modelarts.task_logs import TaskLogsSource, TaskLogTarget

    tasks = [TaskLogTarget("j1", "worker-0", "bert", True), TaskLogTarget("j2", "worker-1", None, False)]
    text = encode_targets(tasks)
    assert text is not None
    assert decode_targets(text, object.__new__(TaskLogsSource)) == tasks
    events = [JobTarget("j1", "bert")]
    assert decode_targets(encode_targets(events) or "", object.__new__(EventsSource)) == events
    others = [V1LogTarget(10, 11, "log1.log"), ServiceTarget("s1", "svc")]
    assert encode_targets(others) is not None
    foreign = json.dumps([{"type": "collector_plugin.config:Config", "fields": {}}])
    assert decode_targets(foreign, object.__new__(TaskLogsSource)) is None
    assert decode_targets("not json", object.__new__(TaskLogsSource)) is None
    assert encode_targets([object()]) is None  # not a dataclass: every replica lists by itself
