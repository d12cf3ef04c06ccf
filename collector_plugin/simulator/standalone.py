"""``modelarts-receiver simulate``: a default-scenario simulator that runs until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import threading
from typing import Any, TextIO

from collector_plugin.simulator.scenario import Scenario
from collector_plugin.simulator.server import Simulator


def describe(sim: Simulator) -> str:
    """What a user needs to point a receiver at the simulator, ending with a ready YAML config.

    The AK/SK printed are the simulator's own fake credentials: printing them is the point.
    """
    sc = sim.scenario
    lines = [
        f"ModelArts simulator listening on {sim.url}",
        f"  project_id: {sim.project_id}",
        f"  ak:         {sim.ak}",
        f"  sk:         {sim.sk}",
        f"  IAM login:  {sim.username} / {sim.password} (domain {sim.domain_name}) at {sim.url}/v3/auth/tokens",
        "training jobs (v2):",
    ]
    lines += [f"  {j.id}  {j.phase:<10} {j.name}  tasks: {', '.join(j.tasks)}" for j in sc.jobs]
    lines.append("training jobs (v1):")
    lines += [f"  job {v.job_id} version {v.version_id}  files: {', '.join(v.file_names)}" for v in sc.v1_jobs]
    lines.append("services:")
    lines += [f"  {s.id}  {s.infer_type:<9} {s.name}" for s in sc.services]
    lines += ["", "# receiver config (save as receiver.yaml):", receiver_yaml(sim)]
    return "\n".join(lines)


def receiver_yaml(sim: Simulator) -> str:
    sc = sim.scenario
    out = [
        "modelarts:",
        f"  endpoint: {sim.url}",
        f"  project_id: {sim.project_id}",
        "  auth:",
        f"    ak: {sim.ak}",
        f"    sk: {sim.sk}",
        "sources:",
        "  training_task_logs:",
        "    start_at: beginning",
        "    jobs:",
    ]
    out += [f"      - id: {j.id}" for j in sc.jobs]
    out += ["  training_job_events:", "    jobs:"]
    out += [f"      - id: {j.id}" for j in sc.jobs]
    out += ["  training_job_logs_v1:", "    start_at: beginning", "    jobs:"]
    out += [f"      - job_id: {v.job_id}\n        version_id: {v.version_id}" for v in sc.v1_jobs]
    out += ["  service_update_logs:", "    services:"]
    out += [f"      - id: {s.id}" for s in sc.services if s.infer_type in ("real-time", "edge")]
    out += [
        "exporter:",
        "  protocol: http/protobuf",
        "  endpoint: http://127.0.0.1:4318",
        "checkpoint:",
        "  path: ./checkpoints.db",
    ]
    return "\n".join(out)


def serve(
    port: int = 8080,
    host: str = "127.0.0.1",
    seed: int = 0,
    grow_bps: int = 2048,
    *,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run a default-scenario simulator with growing logs until SIGINT/SIGTERM (or ``stop`` is set)."""
    import sys

    stream = out or sys.stdout
    done = stop or threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: object) -> None:
        done.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    sim = Simulator(Scenario.default(seed=seed), host=host, port=port)
    try:
        sim.start()
        if grow_bps > 0:
            sim.start_growth(grow_bps)
        print(describe(sim), file=stream, flush=True)
        while not done.wait(0.5):
            pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
