"""The command line as a user meets it: version, sources, simulate, demo, tail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from collector_plugin import __version__
from collector_plugin.cli import main
from collector_plugin.simulator import Scenario, Simulator

CLI = [sys.executable, "-m", "collector_plugin.cli"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"modelarts-receiver {__version__}"


def test_sources_lists_builtins_with_origin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sources"]) == 0
    out = capsys.readouterr().out
    for name in ("training_task_logs", "training_job_logs_v1", "training_job_events", "service_update_logs"):
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert "builtin" in line


def test_user_mistakes_are_one_line_not_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([*CLI, "run", "--config", str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "cannot read the file" in proc.stderr
    assert "Traceback" not in proc.stderr
    env = {k: v for k, v in os.environ.items() if k != "MODELARTS_RECEIVER_CONFIG"}
    proc = subprocess.run([*CLI, "validate"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "pass --config FILE" in proc.stderr


def test_simulate_prints_what_a_user_needs(tmp_path: Path) -> None:
    from rotel_harness import free_port

    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "simulate", "--port", str(port)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        head = [proc.stdout.readline() for _ in range(6)]
        assert head[0].strip() == f"ModelArts simulator listening on http://127.0.0.1:{port}"
        assert any(line.strip().startswith("project_id:") for line in head)
        assert any(line.strip().startswith("sk:") for line in head)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_demo_prints_records_and_stops_by_itself() -> None:
    started = time.monotonic()
    proc = subprocess.run([*CLI, "demo", "--duration", "6"], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.monotonic() - started < 60
    out = proc.stdout.splitlines()
    assert len(out) > 20
    assert any("modelarts.training_job.event" in line for line in out)
    assert any("modelarts.service.update" in line for line in out)
    assert any("/worker-0" in line for line in out)
    assert "Traceback" not in proc.stderr


def test_tail_prints_a_task_log_like_kubectl_logs(tmp_path: Path) -> None:
    scenario = Scenario()
    job = scenario.add_job("tail-job", tasks=("worker-0", "worker-1"))
    job.task("worker-0").append("first line\nsecond 行\r\nunterminated")
    job.task("worker-1").append("other task\n")
    job.add_event("Training job is running.", level="Info", source="Job")
    with Simulator(scenario) as sim:
        config = tmp_path / "c.yaml"
        config.write_text(
            yaml.safe_dump(
                {"modelarts": {"endpoint": sim.url, "project_id": sim.project_id, "auth": {"ak": sim.ak, "sk": sim.sk}}}
            )
        )
        proc = subprocess.run(
            [*CLI, "tail", "tail-job", "--task", "worker-0", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == ["first line", "second 行", "unterminated"]
        proc = subprocess.run(
            [*CLI, "tail", "tail-job", "--events", "--config", str(config)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert "other task" in proc.stdout and "Training job is running." in proc.stdout


def test_telemetry_port_in_use_is_one_line_naming_the_key(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "modelarts": {"endpoint": "http://127.0.0.1:9", "project_id": "p", "auth": {"token": "t"}},
                    "exporter": {"endpoint": "http://127.0.0.1:9"},
                    "checkpoint": {"path": str(tmp_path / "cp.db")},
                    "telemetry": {"listen": f"127.0.0.1:{port}", "log_level": "error"},
                }
            )
        )
        proc = subprocess.run([*CLI, "run", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: telemetry.listen: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in line
