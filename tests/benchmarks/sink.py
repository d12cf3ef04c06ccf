"""A counting OTLP/HTTP logs sink for the benchmarks, run in its own process.

``python tests/benchmarks/sink.py`` prints ``{"port": N}`` and serves ``POST /v1/logs``
(protobuf, gzip or not) and ``GET /stats`` until SIGTERM. It counts records, unique records
(by ``log.record.uid`` when present, else by body: the naive pipeline sends no uid, and the
benchmark's lines are unique) and, for bodies starting ``t=<ns>``, the delay from that write
time to the arrival of the request.
"""

from __future__ import annotations

import gzip
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

UID = "log.record.uid"


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.records = 0
        self.requests = 0
        self.keys: set[int] = set()
        self.first_ns = 0
        self.last_ns = 0
        self.delays_ms: list[float] = []
        self.body_bytes = 0

    def add(self, payload: bytes) -> None:
        arrived = time.time_ns()
        request = ExportLogsServiceRequest()
        request.ParseFromString(payload)
        keys: list[int] = []
        delays: list[float] = []
        nbytes = 0
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    body = rec.body.string_value
                    nbytes += len(body)
                    key = None
                    for kv in rec.attributes:
                        if kv.key == UID:
                            key = kv.value.string_value
                            break
                    keys.append(hash(key if key is not None else body))
                    if body.startswith("t="):
                        stamp = body[2 : body.find(" ")]
                        if stamp.isdigit():
                            delays.append((arrived - int(stamp)) / 1e6)
        with self.lock:
            self.requests += 1
            self.records += len(keys)
            self.keys.update(keys)
            self.delays_ms.extend(delays)
            self.body_bytes += nbytes
            if keys:
                self.first_ns = self.first_ns or arrived
                self.last_ns = arrived

    def reset(self) -> None:
        with self.lock:
            self._clear()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            delays = sorted(self.delays_ms)
            return {
                "records": self.records,
                "unique": len(self.keys),
                "requests": self.requests,
                "first_ns": self.first_ns,
                "last_ns": self.last_ns,
                "body_bytes": self.body_bytes,
                "delays": len(delays),
                "delay_p50_ms": _pct(delays, 0.50),
                "delay_p99_ms": _pct(delays, 0.99),
                "delay_max_ms": delays[-1] if delays else None,
            }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def serve(tally: Tally | None = None) -> None:
    """Count what arrives in ``tally`` (a plain :class:`Tally` by default) until SIGTERM."""
    tally = tally or Tally()
    ok = ExportLogsServiceResponse().SerializeToString()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            if self.path == "/reset":
                tally.reset()
                self._send(b"{}", "application/json")
                return
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length)
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                data = gzip.decompress(data)
            tally.add(data)
            self._send(ok, "application/x-protobuf")

        def do_GET(self) -> None:
            self._send(json.dumps(tally.stats()).encode(), "application/json")

        def _send(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    while not done.wait(0.5):
        pass
    server.shutdown()


if __name__ == "__main__":
    serve()
