"""Run the real rotel collector (from the ``rotel`` PyPI package) on loopback, and read what it got.

rotel is started in the foreground (not ``--daemon``) so we own its PID and stop it by that PID.
With ``--debug-log logs --debug-log-verbosity detailed`` it prints every log record it receives to
stdout, which we send to a file and parse; ``--exporter blackhole`` discards the data afterwards.
``verbosity="basic"`` prints only a count per request (see :meth:`RotelCollector.received_count`),
cheap enough for benchmarks.

Parsing limits: string attribute values must not contain newlines (bodies may); nested values
(``Slice``/``Map``/``Bytes``) are returned as rotel's text, e.g. ``"Slice(Str(a))"``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rotel

ROTEL_BINARY = Path(rotel.__file__).parent / "rotel-agent"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class RotelCollector:
    """One rotel process; ``stop()`` and ``start()`` again keep the same ports and output file."""

    workdir: Path
    verbosity: str = "detailed"
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _outputs: list[Path] = field(default_factory=list)

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """The full OTLP/HTTP logs URL."""
        return f"http://127.0.0.1:{self.http_port}/v1/logs"

    def start(self, timeout: float = 15.0) -> None:
        if self.process is not None:
            raise RuntimeError("rotel is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        n = len(self._outputs)
        output = self.workdir / f"rotel-{n}.out"
        self._outputs.append(output)
        args = [
            str(ROTEL_BINARY),
            "start",
            "--log-format",
            "json",
            "--exporter",
            "blackhole",
            "--debug-log",
            "logs",
            "--debug-log-verbosity",
            self.verbosity,
            "--log-file",
            str(self.workdir / f"rotel-{n}.log"),
            "--pid-file",
            str(self.workdir / f"rotel-{n}.pid"),
            "--otlp-grpc-endpoint",
            f"127.0.0.1:{self.grpc_port}",
            "--otlp-http-endpoint",
            f"127.0.0.1:{self.http_port}",
            "--otlp-grpc-max-recv-msg-size-mib",
            "16",
            # rotel acknowledges a request once it is queued; without batching it prints it at
            # once, so a stop() right after an acknowledgement cannot lose what it had queued.
            "--disable-batching",
        ]
        with open(output, "wb") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (_listening(self.grpc_port) and _listening(self.http_port)):
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"rotel exited at start: {output.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("rotel did not start listening in time")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop rotel by its PID (SIGTERM, then SIGKILL) and wait until its ports are free."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        deadline = time.monotonic() + 5
        while (_listening(self.grpc_port) or _listening(self.http_port)) and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self._outputs if p.exists())

    def records(self, wait_for: int = 0, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every log record received so far (across restarts), waiting until at least ``wait_for``."""
        deadline = time.monotonic() + timeout
        size, found = -1, []
        while True:
            current = self._output_size()
            if current != size:  # reparse only when rotel wrote more
                size, found = current, parse_detailed(self.output())
            if len(found) >= wait_for or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def _output_size(self) -> int:
        return sum(p.stat().st_size for p in self._outputs if p.exists())

    def received_count(self, wait_for: int = 0, timeout: float = 10.0, settle: float = 0.5) -> int:
        """Records received (any verbosity): sums the per-request counts rotel logs.

        Waits until ``wait_for`` is reached, or the count stopped changing for ``settle`` seconds.
        """
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while True:
            count = count_received(self.output())
            if count != last:
                last, last_change = count, time.monotonic()
            if (wait_for and count >= wait_for) or time.monotonic() > deadline:
                return count
            if not wait_for and time.monotonic() - last_change >= settle:
                return count
            time.sleep(0.05)


def count_received(text: str) -> int:
    total = 0
    for line in text.splitlines():
        if line.startswith("{") and '"Received logs' in line:
            try:
                event = json.loads(line)
                total += int(event.get("logs", event.get("fields", {}).get("logs", 0)))
            except (ValueError, AttributeError, TypeError):
                continue
    return total


_VALUE = re.compile(r"^(Str|Int|Double|Bool|Bytes|Slice|Map|Empty)\((.*)\)$", re.S)


def parse_value(text: str) -> Any:
    """rotel's ``Type(value)`` text to a Python value (nested types stay text)."""
    match = _VALUE.match(text)
    if match is None:
        return text
    kind, inner = match.groups()
    if kind == "Str":
        return inner
    if kind == "Int":
        return int(inner)
    if kind == "Double":
        return float(inner)
    if kind == "Bool":
        return inner == "true"
    return text


def parse_detailed(text: str) -> list[dict[str, Any]]:
    """Parse rotel's detailed debug output into records (body, attributes, severity, times, resource)."""
    records: list[dict[str, Any]] = []
    resource: dict[str, Any] = {}
    lines = text.split("\n")
    i = 0
    in_resource = False
    while i < len(lines):
        line = lines[i]
        if line.startswith("ResourceLog #"):
            resource = {}
            in_resource = False
        elif line == "Resource attributes:":
            in_resource = True
        elif in_resource and line.startswith("     -> "):
            key, _, value = line[8:].partition(": ")
            resource[key] = parse_value(value)
        elif line.startswith("ScopeLogs #"):
            in_resource = False
        elif line.startswith("LogRecord #"):
            record, i = _parse_record(lines, i + 1)
            record["resource"] = dict(resource)
            records.append(record)
            continue
        i += 1
    return records


def _parse_record(lines: list[str], i: int) -> tuple[dict[str, Any], int]:
    record: dict[str, Any] = {"event_name": "", "attributes": {}}
    while i < len(lines):
        line = lines[i]
        if line.startswith("ObservedTimestamp: "):
            record["observed_time_unix_nano"] = _timestamp(line.split(": ", 1)[1])
        elif line.startswith("Timestamp: "):
            record["time_unix_nano"] = _timestamp(line.split(": ", 1)[1])
        elif line.startswith("SeverityText: "):
            record["severity_text"] = line.split(": ", 1)[1]
        elif line.startswith("SeverityText:"):
            record["severity_text"] = ""
        elif line.startswith("SeverityNumber: "):
            match = re.search(r"\((-?\d+)\)$", line)
            record["severity_number"] = int(match.group(1)) if match else 0
        elif line.startswith("EventName: "):
            record["event_name"] = line.split(": ", 1)[1]
        elif line.startswith("Body: "):
            body_lines = [line[len("Body: ") :]]
            i += 1
            while i < len(lines) and lines[i] != "Attributes:" and not lines[i].startswith("    Trace ID"):
                body_lines.append(lines[i])
                i += 1
            record["body"] = parse_value("\n".join(body_lines))
            continue
        elif line == "Attributes:":
            i += 1
            while i < len(lines) and lines[i].startswith("     -> "):
                key, _, value = lines[i][8:].partition(": ")
                record["attributes"][key] = parse_value(value)
                i += 1
            continue
        elif line.startswith("Flags:"):
            return record, i + 1
        i += 1
    return record, i


def _timestamp(text: str) -> int:
    text = text.strip()
    if text.isdigit():
        return int(text)
    return -1  # a formatted date: compare only presence
