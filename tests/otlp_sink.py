"""An OTLP/HTTP logs sink in the test process: every record decoded, every request kept.

It serves ``POST /v1/logs`` (protobuf, gzip or not) on 127.0.0.1 from a thread and answers only
after it stored the request. Tests read :meth:`OtlpSink.records` (decoded dicts, in arrival
order) and wait on conditions over them; several receivers may send to one sink.
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from collector_plugin.testing import DecodedRecord, decode_request


class OtlpSink:
    """Start with :meth:`start` (or as a context manager); ``endpoint`` is the OTLP/HTTP logs URL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[DecodedRecord] = []
        self.requests = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/logs"

    def records(self) -> list[DecodedRecord]:
        with self._lock:
            return list(self._records)

    def start(self) -> OtlpSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding", "") == "gzip":
                    body = gzip.decompress(body)
                decoded = decode_request(body)
                with sink._lock:
                    sink._records.extend(decoded)
                    sink.requests += 1
                answer = ExportLogsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-sink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OtlpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
