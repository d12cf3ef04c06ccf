"""The stdlib HTTP server under the simulator: parse, apply faults, route, send, log.

It knows the simulator only through :class:`Router` (what ``Simulator`` offers it), so it can be
read without the API families.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl

import httpx

from collector_plugin.simulator.faults import FaultInjector, FaultRule
from collector_plugin.simulator.protocol import Reply, Request, RequestLog, Route, error_reply

UNKNOWN = "unknown"


class Router(Protocol):
    """What the server needs from the simulator."""

    faults: FaultInjector

    def find_route(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None: ...

    def handle(self, req: Request, route: Route) -> Reply: ...

    def record(self, entry: RequestLog) -> None: ...


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    sim: Router

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def close_connections(self) -> None:
        """Drop kept-alive connections, so a stopped simulator really stops answering."""
        with self.connections_lock:
            conns, self.open_connections = self.open_connections, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Client disconnects and injected resets are expected; stay quiet."""


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # head and body in one send: separate small sends meet delayed ACKs
    server: SimulatorServer
    timeout = 60

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: request URLs can carry OBS signatures."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        sim = self.server.sim
        raw_path, _, raw_query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        found = sim.find_route(self.command, raw_path)
        endpoint = found[0].template if found else UNKNOWN
        rule = sim.faults.match(self.command, raw_path)
        if rule is not None and rule.delay:
            time.sleep(rule.delay)
        if rule is not None and rule.reset:
            sim.record(RequestLog(self.command, raw_path, _redact(query), 0, endpoint))
            self._reset()
            return
        if rule is not None and rule.answers:
            reply = _fault_reply(rule)
        elif found is None:
            reply = error_reply(404, "APIG.0101", "The API does not exist or has not been published.")
        else:
            headers = httpx.Headers(list(self.headers.items()))
            req = Request(self.command, raw_path, raw_query, query, headers, body, found[1])
            reply = sim.handle(req, found[0])
        sim.record(RequestLog(self.command, raw_path, _redact(query), reply.status, endpoint, len(reply.body)))
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST, as a crashing proxy does."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()


def _redact(query: dict[str, str]) -> dict[str, str]:
    return {k: ("***" if k in ("Signature", "AWSAccessKeyId") else v) for k, v in query.items()}


def _fault_reply(rule: FaultRule) -> Reply:
    status = rule.status if rule.status is not None else 200
    content_type = "text/html" if rule.body is not None else "application/json;charset=UTF-8"
    reply = Reply(status, rule.error_body(), content_type)
    if rule.retry_after is not None:
        value = rule.retry_after
        reply.headers["Retry-After"] = str(int(value) if isinstance(value, float) and value.is_integer() else value)
    return reply
