"""No secret ever leaves the receiver: not in its logs (at debug level), not in what it exports.

The receiver runs against the simulator with each kind of credential (AK/SK with a security
token, a static IAM token, an IAM password login), reads task logs through signed OBS links,
reads services whose configs hold env values, and meets errors along the way (an expired link, a
5xx, a failed export), so the error paths log too. Everything it logged and every byte it
exported is then searched for the SK, the security token, the IAM tokens, the password, the OBS
signatures and signed URLs, and the env values.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from collector_plugin.config import parse_config
from collector_plugin.logs import clear_secrets, register_secret, setup_logging
from collector_plugin.plugins import load_sources
from collector_plugin.receiver import build_receiver
from collector_plugin.simulator import Scenario, Simulator
from collector_plugin.testing import MemoryTransport

JOB = "0a1b2c3d-5ec0-4000-8000-0000000005ec"
SERVICE = "5e1f0000-5ec0-4000-8000-0000000005ec"
AK = "H7ACCESSKEY000000001"
SK = "H7-secret-key-Zq8xW2vN5mR7tY1uI3oP6aS9dF4gH0jK"
SECURITY_TOKEN = "h7-sts-token-" + "gAAAAABkX2" * 8
STATIC_TOKEN = "MIIh7static-" + "Tk9" * 30
PASSWORD = "h7-Pa55word-9f8e7d6c"
USERNAME = "h7-user"
DOMAIN = "h7-domain"


class RawTransport(MemoryTransport):
    """Keeps every payload as sent, besides decoding it."""

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[bytes] = []

    async def send(self, payload: bytes, nrecords: int) -> int:
        self.payloads.append(payload)
        return await super().send(payload, nrecords)


class Recorder:
    """Wraps the simulator's issuers, to know every IAM token and signed link it handed out."""

    def __init__(self, sim: Simulator) -> None:
        self.tokens: list[str] = []
        self.urls: list[str] = []
        issue_token, obs_url = sim.issue_token, sim.obs_url

        def record_token() -> str:
            token = issue_token()
            self.tokens.append(token)
            return token

        def record_url(job_id: str, task: str) -> str:
            url = obs_url(job_id, task)
            self.urls.append(url)
            return url

        sim.issue_token = record_token  # type: ignore[method-assign]
        sim.obs_url = record_url  # type: ignore[method-assign]

    def secrets(self) -> list[str]:
        out = list(self.tokens)
        for url in self.urls:
            out.append(url)
            query = urlsplit(url).query
            out.append(query)
            out += parse_qs(query)["Signature"]
            out.append(query.split("Signature=")[1])  # the percent-encoded form
        return out


def scenario() -> Scenario:
    sc = Scenario()
    job = sc.add_job(JOB, name="secret-job", tasks=("worker-0",))
    job.task("worker-0").append("".join(f"[INFO] step {i} 训练 {'q' * (i % 80)}\n" for i in range(900)))
    for i in range(12):
        job.add_event(f"secret-test event {i}", time_ms=1_700_000_000_000 + i)
    service = sc.add_service(SERVICE, name="secret-svc", infer_type="real-time")
    service.start_update(time_ms=1_700_000_000_000).finish("SUCCESS")
    service.start_update(time_ms=1_700_000_060_000).finish("FAIL")
    return sc


def env_values(sc: Scenario) -> list[str]:
    values = []
    for service in sc.services:
        for update in service.updates:
            for cfg in update.config:
                values += [v for k, v in cfg.get("envs", {}).items() if k != "MODEL_LOG_LEVEL"]
    assert values
    return values


def auth_for(kind: str, sim: Simulator) -> dict[str, Any]:
    if kind == "aksk+security_token":
        return {"ak": AK, "sk": SK, "security_token": SECURITY_TOKEN}
    if kind == "token":
        return {"token": STATIC_TOKEN}
    return {"username": USERNAME, "password": PASSWORD, "domain_name": DOMAIN, "iam_endpoint": sim.url}


def simulator_for(kind: str, sc: Scenario) -> Simulator:
    common: dict[str, Any] = {"preview_cap": 4096}  # the backlog must come through signed OBS links
    if kind == "aksk+security_token":
        return Simulator(sc, ak=AK, sk=SK, security_token=SECURITY_TOKEN, **common)
    if kind == "token":
        return Simulator(sc, token=STATIC_TOKEN, **common)
    return Simulator(sc, username=USERNAME, password=PASSWORD, domain_name=DOMAIN, **common)


def config_raw(sim: Simulator, tmp: Path, auth: dict[str, Any], endpoint: str | None = None) -> dict[str, Any]:
    fast = {"poll_interval": "100ms", "max_poll_interval": "500ms"}
    raw: dict[str, Any] = {
        "modelarts": {
            "region": "sim-1",
            "endpoint": sim.url,
            "project_id": sim.project_id,
            "auth": auth,
            "retry": {"max_attempts": 2, "initial_backoff": "20ms", "max_backoff": "50ms"},
        },
        "sources": {
            "training_task_logs": {**fast, "start_at": "beginning", "jobs": [{"id": JOB}]},
            "training_job_events": {**fast, "jobs": [{"id": JOB}]},
            "service_update_logs": {**fast, "services": [{"id": SERVICE}]},
        },
        "exporter": {"batch": {"max_records": 200, "max_delay": "20ms"}, "retry_initial_backoff": "10ms"},
        "checkpoint": {"path": str(tmp / "cp.db")},
        "telemetry": {"listen": "", "log_level": "debug", "log_format": "json"},
        "shutdown": {"grace_period": "3s"},
    }
    if endpoint is not None:
        raw["exporter"].update({"protocol": "http/protobuf", "endpoint": endpoint, "retry_max_backoff": "200ms"})
    return raw


def inject_errors(sim: Simulator) -> None:
    """Make the error paths run: an expired link, a 5xx, a malformed answer."""
    sim.faults.add(r"^/obs/", status=403, times=1)
    sim.faults.error(r"/logs/(preview|url)$", status=500, times=2)  # a log read from the start asks for its link first
    sim.faults.malformed(r"/events$", times=1)


def find_leaks(secrets: list[str], haystacks: dict[str, bytes]) -> list[str]:
    leaks = []
    for secret in secrets:
        needle = secret.encode()
        for name, data in haystacks.items():
            if needle in data:
                leaks.append(f"{secret[:12]}... found in {name}")
    return leaks


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """What the receiver writes to its log stream, at debug level, formatted as JSON."""
    stream = io.StringIO()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    noisy = {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "grpc", "hpack")}
    setup_logging("debug", "json", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lvl in noisy.items():
            logging.getLogger(name).setLevel(lvl)
        clear_secrets()


@pytest.mark.parametrize("kind", ["aksk+security_token", "token", "password"])
async def test_no_secret_in_logs_or_exported_records(tmp_path: Path, kind: str, captured_logs: io.StringIO) -> None:
    sc = scenario()
    transport = RawTransport()
    transport.fail_next(1)
    with simulator_for(kind, sc) as sim:
        recorder = Recorder(sim)
        inject_errors(sim)
        config = parse_config(config_raw(sim, tmp_path, auth_for(kind, sim)), load_sources(), environ={})
        # As the CLI does once the config is loaded.
        auth = config.modelarts.auth
        for secret in (auth.sk, auth.security_token, auth.token, auth.password):
            if secret is not None:
                register_secret(secret.get_secret_value())
        receiver = build_receiver(
            config, load_sources(), environ={}, transport=transport, telemetry=False, jitter=False
        )
        stop = asyncio.Event()
        run = asyncio.create_task(receiver.run(stop))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tasks = sum("modelarts.task.id" in r["attributes"] for r in transport.records)
            updates = sum(r["event_name"] == "modelarts.service.update" for r in transport.records)
            events = sum(r["event_name"] == "modelarts.training_job.event" for r in transport.records)
            if tasks >= 900 and updates >= 2 and events >= 12:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(run, 20)

    assert tasks >= 900 and updates >= 2 and events >= 12, "the run did not read everything"
    assert recorder.urls, "the backlog was not read through signed OBS links"
    assert sim.faults.pending == 0, "every injected error was met"
    if kind == "password":
        assert recorder.tokens, "no IAM login happened"
    logs = captured_logs.getvalue()
    assert "retry" in logs.lower() or "failed" in logs.lower(), "the error paths did not log"
    secrets = [SK, SECURITY_TOKEN, STATIC_TOKEN, PASSWORD, *recorder.secrets(), *env_values(sc)]
    leaks = find_leaks(
        secrets,
        {
            "logs": logs.encode(),
            "exported payloads": b"".join(transport.payloads),
            "decoded records": repr(transport.records).encode(),
        },
    )
    assert not leaks, leaks
    # The env keys are kept, their values redacted.
    configs = [
        r["attributes"]["modelarts.service.config"]
        for r in transport.records
        if r["event_name"] == "modelarts.service.update"
    ]
    assert "DB_PASSWORD" in repr(configs) and "[REDACTED]" in repr(configs)


def _collect(stream: Any, into: list[bytes]) -> None:
    """In a thread: a child's pipe, chunk by chunk, until the child closes it."""
    for chunk in iter(lambda: stream.read1(65536), b""):
        into.append(chunk)


def test_cli_stderr_holds_no_secret(tmp_path: Path) -> None:
    """The real process, debug level, credentials from the SDK's variables, collector down."""
    sc = scenario()
    with Simulator(sc, ak=AK, sk=SK, security_token=SECURITY_TOKEN, preview_cap=4096) as sim:
        recorder = Recorder(sim)
        inject_errors(sim)
        raw = config_raw(sim, tmp_path, {}, endpoint="http://127.0.0.1:9/v1/logs")
        del raw["modelarts"]["auth"]
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        env = {
            **os.environ,
            "HUAWEICLOUD_SDK_AK": AK,
            "HUAWEICLOUD_SDK_SK": SK,
            "HUAWEICLOUD_SDK_SECURITY_TOKEN": SECURITY_TOKEN,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector_plugin.cli", "run", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        # Both pipes are read as they come (a full pipe would stall the child), so the test can
        # wait on what the process logged.
        outputs: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        readers = [
            threading.Thread(target=_collect, args=(stream, outputs[name]), daemon=True)
            for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr))
        ]
        for reader in readers:
            reader.start()
        try:
            deadline = time.monotonic() + 30  # a guard only: each step below is a condition
            while time.monotonic() < deadline and (len(recorder.urls) < 2 or sim.faults.pending):
                time.sleep(0.05)
            # Then until a failing export was logged (the collector is down), not a fixed second.
            while time.monotonic() < deadline and b"records failed" not in b"".join(outputs["stderr"]):
                time.sleep(0.05)
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            for reader in readers:
                reader.join(30)
        out, err = b"".join(outputs["stdout"]), b"".join(outputs["stderr"])
    assert recorder.urls, "the backlog was not read through signed OBS links"
    assert b"export" in err.lower(), "the failing export was not logged"
    leaks = find_leaks([SK, SECURITY_TOKEN, *recorder.secrets(), *env_values(sc)], {"stderr": err, "stdout": out})
    assert not leaks, leaks


def test_config_errors_hold_no_secret(tmp_path: Path) -> None:
    """A rejected config names the key, never the value."""
    path = tmp_path / "bad.yaml"
    raw = {
        "modelarts": {"region": "r", "project_id": "p", "auth": {"ak": AK, "sk": SK, "token": STATIC_TOKEN}},
        "exporter": {"headers": {"authorization": SECURITY_TOKEN}, "bogus": SK},
    }
    path.write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [sys.executable, "-m", "collector_plugin.cli", "validate", "--config", str(path)],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert not find_leaks([SK, STATIC_TOKEN, SECURITY_TOKEN], {"stderr": result.stderr, "stdout": result.stdout})
