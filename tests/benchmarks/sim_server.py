"""The simulator side of the benchmarks, run in its own process so its CPU is not counted as ours.

``python tests/benchmarks/sim_server.py SCENARIO [options]`` builds a scenario, serves it, prints
one JSON line (URL, credentials, targets, served line counts, control port) and serves until
SIGTERM. A small control server on another port answers ``GET /stats`` (requests per endpoint,
bytes and lines served) and ``POST /reset`` (forget the request log).

Scenarios:

- ``throughput``: ``--tasks`` task logs of ``--mb`` MB each, every line unique (so a sink can count
  losses and duplicates by body).
- ``api``: one small task log, one v1 job file, jobs with many events, services with update
  histories: requests per source against the API's minimum, then idle.
- ``scale``: ``--jobs`` jobs of ``--tasks-per-job`` tasks whose logs grow ``--grow-bps`` bytes/s
  each; every line carries ``t=<time_ns>`` of its append, for the delay measurement.
- ``budget``: ``--jobs`` running jobs of one task (timed lines, ``--grow-bps``, an event now and
  then) and ``--services`` services whose updates stay RUNNING ``--update-hold`` seconds, then
  SUCCESS; every state's time is in ``/stats`` (``states``), to count transitions missed.

``--flow-limit`` (``8/s``, ``600/min``) puts the gateway's per-AK flow control in front; ``/stats``
then also has ``calls``: served and refused per endpoint.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from collector_plugin.simulator import Scenario, Simulator
from collector_plugin.simulator.scenario import TaskLog

_WORDS = ("数据加载完成", "loss 下降 📉", "checkpoint saved ✅", "grad-norm ok", "lr warmup", "吞吐量稳定")


def unique_lines(task: str, nbytes: int, seed: int) -> bytes:
    """Complete, unique lines (~130 bytes each, some multi-byte) adding up to about ``nbytes``."""
    rng = random.Random(seed)
    out: list[bytes] = []
    size = 0
    i = 0
    while size < nbytes:
        pad = "x" * rng.randint(0, 60)
        level = "INFO" if i % 10 else "WARNING"
        line = (
            f"2024/05/18 14:28:{i % 60:02d},{i % 1000:03d} - {level} - [{task}] step {i} "
            f"loss={rng.random():.5f} {_WORDS[i % len(_WORDS)]} {pad}\n"
        ).encode()
        out.append(line)
        size += len(line)
        i += 1
    return b"".join(out)


def build_throughput(sc: Scenario, tasks: int, mb: float, tasks_per_job: int) -> dict[str, Any]:
    jobs: dict[str, list[str]] = {}
    for j in range((tasks + tasks_per_job - 1) // tasks_per_job):
        names = [f"worker-{t}" for t in range(min(tasks_per_job, tasks - j * tasks_per_job))]
        job = sc.add_job(f"bench-job-{j:04d}", name=f"bench-{j}", tasks=names)
        for name in names:
            job.task(name).append(unique_lines(f"{job.id}/{name}", int(mb * 1024 * 1024), seed=j * 1000 + len(name)))
        jobs[job.id] = names
    return {"jobs": jobs}


def build_api(sc: Scenario, v1_kb: int, events: int, updates: int, spacing_ms: int) -> dict[str, Any]:
    job = sc.add_job("api-job-0000", name="api-bench", tasks=("worker-0",))
    job.task("worker-0").append(unique_lines("api/worker-0", 64 * 1024, seed=7))
    event_jobs = [job.id]
    base = 1_700_000_000_000
    for j in range(2):
        ej = job if j == 0 else sc.add_job(f"api-job-{j:04d}", name=f"api-{j}", tasks=("worker-0",), phase="Running")
        for i in range(events):
            ej.add_event(
                f"event {ej.id} #{i}", level=("Info", "Warning")[i % 2], source="Job", time_ms=base + i * spacing_ms
            )
        if j:
            event_jobs.append(ej.id)
    v1 = sc.add_v1_job(101, 201, {"bench.log": unique_lines("v1/bench", v1_kb * 1024, seed=11)})
    services = []
    for s in range(2):
        svc = sc.add_service(f"api-svc-{s:04d}", name=f"svc-{s}", infer_type="real-time")
        for u in range(updates):
            svc.start_update(time_ms=base + u * 1000).finish("SUCCESS" if u % 4 else "FAIL")
        services.append(svc.id)
    return {
        "task_jobs": {job.id: ["worker-0"]},
        "task_bytes": job.task("worker-0").size,
        "event_jobs": event_jobs,
        "events": events * len(event_jobs),
        "v1": {
            "job_id": v1.job_id,
            "version_id": v1.version_id,
            "file": "bench.log",
            "bytes": v1.file("bench.log").size,
            "lines": v1.file("bench.log").data.count(b"\n"),
        },
        "services": services,
        "updates": updates * len(services),
    }


def build_scale(sc: Scenario, jobs: int, tasks_per_job: int) -> dict[str, Any]:
    out: dict[str, list[str]] = {}
    for j in range(jobs):
        names = [f"worker-{t}" for t in range(tasks_per_job)]
        job = sc.add_job(f"scale-job-{j:04d}", name=f"scale-{j}", tasks=names)
        for name in names:
            job.task(name).append(timed_lines(f"{j}/{name}", 0, 2048))
        out[job.id] = names
    return {"jobs": out}


def timed_lines(task: str, seq: int, nbytes: int) -> bytes:
    """Lines stamped with the time they are written (``t=<ns>``), about ``nbytes`` in all."""
    now = time.time_ns()
    out: list[bytes] = []
    size = 0
    while size < nbytes:
        line = f"t={now} {task} seq={seq} step metrics loss=0.1234 throughput=1000 samples/s {'.' * 40}\n".encode()
        out.append(line)
        size += len(line)
        seq += 1
    return b"".join(out)


class ScaleGrowth:
    """Appends timestamped lines to every task log at ``bps`` bytes/s each, plus a few events."""

    def __init__(self, sc: Scenario, bps: int, interval: float = 0.5) -> None:
        self.sc = sc
        self.bps = bps
        self.interval = interval
        self.stop = threading.Event()
        self.seq: dict[int, int] = {}
        self.thread = threading.Thread(target=self.run, daemon=True, name="scale-growth")

    def run(self) -> None:
        rng = random.Random(3)
        logs: list[tuple[str, TaskLog]] = [(f"{job.id}/{t}", job.task(t)) for job in self.sc.jobs for t in job.tasks]
        jobs = self.sc.jobs
        next_event = time.monotonic() + 5
        while not self.stop.wait(self.interval):
            share = int(self.bps * self.interval)
            for i, (name, log) in enumerate(logs):
                seq = self.seq.get(i, 0)
                data = timed_lines(name, seq, share)
                self.seq[i] = seq + data.count(b"\n")
                log.append(data)
            if time.monotonic() >= next_event:
                next_event += 5
                job = rng.choice(jobs)
                job.add_event(f"[worker-0] progress epoch {rng.randint(1, 99)}", source="Task")


def build_budget(sc: Scenario, jobs: int, services: int) -> dict[str, Any]:
    out: dict[str, list[str]] = {}
    for j in range(jobs):
        job = sc.add_job(f"budget-job-{j:04d}", name=f"budget-{j}", tasks=("worker-0",), phase="Running")
        job.task("worker-0").append(timed_lines(f"{j}/worker-0", 0, 1024))
        out[job.id] = ["worker-0"]
    ids = [sc.add_service(f"budget-svc-{s:04d}", name=f"svc-{s}", infer_type="real-time").id for s in range(services)]
    return {"jobs": out, "services": ids}


class BudgetGrowth(ScaleGrowth):
    """Scale growth plus service updates: each service cycles RUNNING (``hold`` s) -> SUCCESS,
    staggered; every state reached is remembered with its time (``states``)."""

    def __init__(self, sc: Scenario, bps: int, hold: float, gap: float = 5.0) -> None:
        super().__init__(sc, bps)
        self.hold, self.gap = hold, gap
        self.states: list[tuple[str, int, str, int]] = []  # service id, update_time ms, result, t ns
        self.lock = threading.Lock()
        n = max(1, len(sc.services))
        start = time.monotonic()
        self.next_at = {s.id: start + i * (hold + gap) / n for i, s in enumerate(sc.services)}

    def run(self) -> None:
        services = threading.Thread(target=self.run_services, daemon=True, name="budget-services")
        services.start()
        super().run()

    def run_services(self) -> None:
        while not self.stop.wait(0.1):
            now = time.monotonic()
            for service in self.sc.services:
                if now < self.next_at[service.id]:
                    continue
                updates = service.updates
                if updates and updates[-1].result == "RUNNING":
                    updates[-1].finish("SUCCESS")
                    update, wait = updates[-1], self.gap
                else:
                    update, wait = service.start_update(), self.hold
                with self.lock:
                    self.states.append((service.id, update.update_time, update.result, time.time_ns()))
                self.next_at[service.id] = now + wait


class Control:
    """``GET /stats`` and ``POST /reset`` over HTTP on 127.0.0.1."""

    def __init__(self, sim: Simulator, info: dict[str, Any], growth: ScaleGrowth | None = None) -> None:
        self.sim = sim
        self.info = info
        self.growth = growth
        control = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._reply(control.stats())

            def do_POST(self) -> None:
                control.sim.reset_requests()
                self._reply({"reset": True})

            def _reply(self, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stats(self) -> dict[str, Any]:
        requests = self.sim.requests
        by_endpoint = Counter(r.endpoint for r in requests)
        by_status = Counter(f"{r.endpoint} {r.status}" for r in requests)
        logs = [job.task(t) for job in self.sim.scenario.jobs for t in job.tasks]
        calls = {e: [c.served, c.refused] for e, c in self.sim.call_counts().items()}
        states: list[tuple[str, int, str, int]] = []
        if isinstance(self.growth, BudgetGrowth):
            with self.growth.lock:
                states = list(self.growth.states)
        return {
            "calls": calls,
            "states": states,
            "lines_written": sum(self.growth.seq.values()) if self.growth else 0,
            "requests": dict(by_endpoint),
            "by_status": dict(by_status),
            "total_requests": len(requests),
            "log_bytes": sum(log.size for log in logs),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("throughput", "api", "scale", "budget"))
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--tasks-per-job", type=int, default=2)
    parser.add_argument("--mb", type=float, default=12.0)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--grow-bps", type=int, default=1024)
    parser.add_argument("--v1-kb", type=int, default=256)
    parser.add_argument("--events", type=int, default=450)
    parser.add_argument("--updates", type=int, default=12)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--update-hold", type=float, default=65.0, help="seconds an update stays RUNNING")
    parser.add_argument("--flow-limit", default=None, help="per-AK gateway limit, e.g. 8/s")
    parser.add_argument("--event-spacing-ms", type=int, default=5000, help="time between a job's events")
    args = parser.parse_args(argv)

    sc = Scenario()
    if args.scenario == "throughput":
        info = build_throughput(sc, args.tasks, args.mb, args.tasks_per_job)
    elif args.scenario == "api":
        info = build_api(sc, args.v1_kb, args.events, args.updates, args.event_spacing_ms)
    elif args.scenario == "budget":
        info = build_budget(sc, args.jobs, args.services)
    else:
        info = build_scale(sc, args.jobs, args.tasks_per_job)
    logs = [job.task(t) for job in sc.jobs for t in job.tasks]
    info["lines"] = sum(log.data.count(b"\n") for log in logs)
    info["bytes"] = sum(log.size for log in logs)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    sim = Simulator(sc, flow_limit=args.flow_limit).start()
    growth: ScaleGrowth | None = None
    try:
        if args.scenario == "scale" and args.grow_bps > 0:
            growth = ScaleGrowth(sc, args.grow_bps)
        elif args.scenario == "budget":
            growth = BudgetGrowth(sc, args.grow_bps, args.update_hold)
        control = Control(sim, info, growth)
        if growth is not None:
            growth.thread.start()
        header = {"url": sim.url, "project_id": sim.project_id, "ak": sim.ak, "sk": sim.sk, "control": control.port}
        print(json.dumps({**header, **info}), flush=True)
        while not done.wait(0.5):
            pass
    finally:
        if growth is not None:
            growth.stop.set()
        sim.stop()


if __name__ == "__main__":
    main()
