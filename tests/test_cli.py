"""The command line as a user meets it: version, sources, simulate, demo, tail."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from collector_plugin import __version__
from collector_plugin.cli import build_parser, main
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


@pytest.fixture(scope="module")
def demo_run() -> tuple[subprocess.CompletedProcess[str], float]:
    """One ``demo --duration 6`` for the tests that read its output (it only reads, never changes
    anything): what it printed and how long it ran."""
    started = time.monotonic()
    proc = subprocess.run([*CLI, "demo", "--duration", "6"], capture_output=True, text=True, timeout=90)
    return proc, time.monotonic() - started


def test_demo_prints_records_and_stops_by_itself(demo_run: tuple[subprocess.CompletedProcess[str], float]) -> None:
    proc, elapsed = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert elapsed < 60
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


def _sim_config(sim: Simulator, path: Path, **extra: object) -> Path:
    modelarts = {"endpoint": sim.url, "project_id": sim.project_id, "auth": {"ak": sim.ak, "sk": sim.sk}}
    path.write_text(yaml.safe_dump({"modelarts": modelarts, **extra}))
    return path


def test_tail_of_a_missing_job_is_exit_1_with_one_line(tmp_path: Path) -> None:
    scenario = Scenario()
    scenario.add_job("real-job", tasks=("worker-0",))
    with Simulator(scenario) as sim:
        config = _sim_config(sim, tmp_path / "c.yaml")
        proc = subprocess.run([*CLI, "tail", "no-such-job", "--config", str(config)], capture_output=True, text=True)
        assert (proc.returncode, proc.stderr.splitlines()) == (1, ["error: training job no-such-job not found"])
        proc = subprocess.run(
            [*CLI, "tail", "real-job", "--task", "worker-9", "--config", str(config)], capture_output=True, text=True
        )
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == ["error: training job real-job has no task worker-9 (its tasks: worker-0)"]


def test_tail_against_an_unreachable_endpoint_names_it(tmp_path: Path) -> None:
    from rotel_harness import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    modelarts = {"endpoint": endpoint, "project_id": "p", "auth": {"token": "t"}, "retry": {"max_attempts": 1}}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"modelarts": modelarts}))
    proc = subprocess.run([*CLI, "tail", "job-1", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: cannot reach the ModelArts API at {endpoint}")


def _read_one_line_and_close(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """What ``cmd | head -1`` does to ``cmd``: read a line, close the pipe, wait for the exit."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = proc.stdout.readline()
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, first, stderr)


def test_tail_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    scenario = Scenario()
    job = scenario.add_job("big-job", tasks=("worker-0",))
    job.task("worker-0").append("".join(f"line {i} of a log longer than any pipe buffer\n" for i in range(20000)))
    with Simulator(scenario) as sim:
        config = _sim_config(sim, tmp_path / "c.yaml")
        proc = _read_one_line_and_close([*CLI, "tail", "big-job", "--config", str(config)])
    assert proc.stdout == "line 0 of a log longer than any pipe buffer\n"
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr


def test_demo_into_a_closed_pipe_stops_its_receiver_and_says_so() -> None:
    proc = _read_one_line_and_close([*CLI, "demo"])  # no --duration: only the closed pipe can stop it
    assert proc.stdout.strip()
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    (summary,) = [line for line in proc.stderr.splitlines() if "records read" in line]
    assert "not printed after the output closed" in summary


def test_demo_ends_with_a_summary_by_source(demo_run: tuple[subprocess.CompletedProcess[str], float]) -> None:
    proc, _ = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = proc.stderr.splitlines()[-1]
    match = re.fullmatch(r"demo: (\d+) records read \((.*)\); (\d+) delivered, 0 unsent; (\d+) API calls", summary)
    assert match, summary
    by_source = dict(part.rsplit(" ", 1) for part in match.group(2).split(", "))
    assert {"training_task_logs", "training_job_events", "service_update_logs"} <= set(by_source)
    assert sum(int(n) for n in by_source.values()) == int(match.group(1)) == int(match.group(3))
    assert int(match.group(1)) == len(proc.stdout.splitlines())
    assert int(match.group(4)) > 0


def test_every_option_says_its_default() -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and "default:" in action.help, f"{name} {action.option_strings[0]}"


def test_run_says_how_many_records_were_left_unsent(tmp_path: Path) -> None:
    from rotel_harness import free_port
    from telemetry_helpers import scrape

    scenario = Scenario()
    scenario.add_job("job-a", tasks=("worker-0",)).task("worker-0").append("a line\n" * 50)
    metrics_port = free_port()
    with Simulator(scenario) as sim:
        config = _sim_config(
            sim,
            tmp_path / "c.yaml",
            sources={"training_task_logs": {"start_at": "beginning", "jobs": [{"id": "job-a"}]}},
            exporter={"protocol": "http/protobuf", "endpoint": f"http://127.0.0.1:{free_port()}"},  # collector down
            checkpoint={"path": str(tmp_path / "cp.db")},
            telemetry={"listen": f"127.0.0.1:{metrics_port}", "log_level": "info"},
            shutdown={"grace_period": "1s"},
        )
        proc = subprocess.Popen(
            [*CLI, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 60  # a guard only: we wait for the records to be read
            read = 0.0
            while time.monotonic() < deadline and read < 50:
                with contextlib.suppress(OSError):  # not listening yet
                    read = scrape(f"http://127.0.0.1:{metrics_port}/metrics").get(
                        'modelarts_receiver_records_read_total{source="training_task_logs"}', 0.0
                    )
                time.sleep(0.05)  # between polls of a condition, not before acting
            assert read == 50
            os.kill(proc.pid, signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 3
    assert stderr.splitlines()[-1].startswith("error: 50 records left unsent when shutdown.grace_period (1s) ran out")
    assert '"records_unsent": 50' in stderr
