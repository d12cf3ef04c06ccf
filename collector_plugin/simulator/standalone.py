"""``modelarts-receiver simulate``: a default-scenario simulator that runs until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import threading
from typing import Any, TextIO

from collector_plugin.simulator.demo import receiver_yaml
from collector_plugin.simulator.gateway import FlowLimit
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


def serve(
    port: int = 8080,
    host: str = "127.0.0.1",
    seed: int = 0,
    grow_bps: int = 2048,
    *,
    flow_limit: FlowLimit | str | None = None,
    obs_lag: float = 0.0,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run a default-scenario simulator with growing logs until SIGINT/SIGTERM (or ``stop`` is set).

    ``flow_limit`` (``"10/s"``, ``"600/min"``) turns on APIG flow control per credential;
    ``obs_lag`` seconds makes OBS objects trail the live log.
    """
    import sys

    stream = out or sys.stdout
    done = stop or threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: object) -> None:
        done.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    sim = Simulator(Scenario.default(seed=seed), host=host, port=port, flow_limit=flow_limit, obs_lag=obs_lag)
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
