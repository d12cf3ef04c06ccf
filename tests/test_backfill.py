"""``modelarts-receiver backfill JOB``: a job's whole log once, acknowledged, resumable, shared with run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from rotel_harness import RotelCollector

from collector_plugin.cli import main
from collector_plugin.simulator import Scenario, Simulator
from collector_plugin.store.sqlite import CheckpointStore

JOB = "job-backfill"


def config_file(tmp: Path, sim: Simulator, endpoint: str) -> Path:
    config = {
        "modelarts": {
            "region": "sim-1",
            "endpoint": sim.url,
            "project_id": sim.project_id,
            "auth": {"ak": sim.ak, "sk": sim.sk},
        },
        "exporter": {"protocol": "grpc", "endpoint": endpoint, "compression": "none", "batch": {"max_delay": "20ms"}},
        "checkpoint": {"path": str(tmp / "cp.db")},
        "telemetry": {"listen": ""},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.e2e
def test_backfill_ships_every_line_once_and_resumes_from_its_cursor(tmp_path: Path) -> None:
    scenario = Scenario()
    job = scenario.add_job(JOB, name="bf", tasks=("worker-0", "worker-1"))
    for task in ("worker-0", "worker-1"):
        job.task(task).append(b"".join(b"%s line %d\n" % (task.encode(), i) for i in range(3000)))
    job.task("worker-1").append(b"no newline yet")
    collector = RotelCollector(tmp_path / "rotel")
    collector.start()
    try:
        with Simulator(scenario) as sim:
            config = config_file(tmp_path, sim, collector.grpc_endpoint)
            assert main(["backfill", JOB, "--config", str(config), "--no-progress"]) == 0
            job.task("worker-0").append(b"worker-0 line 3000\n")
            assert main(["backfill", JOB, "--config", str(config), "--no-progress"]) == 0  # resumes: only the new line
            assert main(["backfill", "no-such-job", "--config", str(config), "--no-progress"]) == 1
        collector.stop()  # rotel prints what it acknowledged before it exits
        received = collector.records()
    finally:
        collector.stop()
    bodies = [r["body"] for r in received]
    expected = [f"worker-0 line {i}" for i in range(3001)] + [f"worker-1 line {i}" for i in range(3000)]
    assert sorted(bodies) == sorted([*expected, "no newline yet"])  # every line exactly once
    with CheckpointStore.open(str(tmp_path / "cp.db")) as store:
        cursors = store.all()
    assert {key.rsplit("/", 1)[1] for key in cursors} == {"worker-0", "worker-1"}  # run resumes after them
