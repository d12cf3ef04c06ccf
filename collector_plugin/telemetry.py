"""Self-telemetry: Prometheus metrics, readiness, and /metrics /healthz /readyz /status on one listener.

Each receiver owns a :class:`Metrics` with its own registry, so tests can run several receivers
in one process. Metric names follow Prometheus conventions with the prefix ``modelarts_receiver_``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from collector_plugin.errors import ReceiverError
from collector_plugin.logs import redact
from collector_plugin.status import render_html

PREFIX = "modelarts_receiver_"
_log = logging.getLogger(__name__)


class Metrics:
    """Every metric the receiver exposes; see README "Self-telemetry" for the list."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.api_requests = Counter(
            PREFIX + "api_requests",
            "ModelArts API requests by endpoint and outcome.",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.api_errors = Counter(
            PREFIX + "api_errors",
            "ModelArts API error answers by error_code.",
            ["endpoint", "error_code"],
            registry=r,
        )
        self.api_retries = Counter(PREFIX + "api_retries", "Requests retried.", ["endpoint", "reason"], registry=r)
        self.throttle_wait_seconds = Counter(
            PREFIX + "throttle_wait_seconds",
            "Seconds spent waiting on the rate limit or Retry-After.",
            registry=r,
        )
        self.bytes_read = Counter(PREFIX + "bytes_read", "Log bytes read from the API.", ["source"], registry=r)
        self.records_read = Counter(PREFIX + "records_read", "Records produced by sources.", ["source"], registry=r)
        self.records_exported = Counter(
            PREFIX + "records_exported", "Records acknowledged by the collector.", registry=r
        )
        self.records_rejected = Counter(
            PREFIX + "records_rejected",
            "Records the collector reported as rejected (partial success).",
            registry=r,
        )
        self.export_failures = Counter(
            PREFIX + "export_failures",
            "Export attempts that failed (and were retried).",
            ["reason"],
            registry=r,
        )
        self.export_latency = Histogram(
            PREFIX + "export_latency_seconds", "Time from sending a batch to its acknowledgement.", registry=r
        )
        self.queue_records = Gauge(PREFIX + "queue_records", "Records waiting to be exported.", registry=r)
        self.target_lag_bytes = Gauge(
            PREFIX + "target_lag_bytes",
            "Log bytes not yet read, per target.",
            ["source", "target"],
            registry=r,
        )
        self.target_lag_seconds = Gauge(
            PREFIX + "target_lag_seconds",
            "Age of the oldest unread event, per target.",
            ["source", "target"],
            registry=r,
        )
        self.checkpoint_commits = Counter(PREFIX + "checkpoint_commits", "Checkpoint commits.", registry=r)
        self.checkpoint_last_commit = Gauge(
            PREFIX + "checkpoint_last_commit_timestamp_seconds",
            "Unix time of the last checkpoint commit.",
            registry=r,
        )
        self.targets_discovered = Gauge(
            PREFIX + "targets_discovered", "Targets known per source.", ["source"], registry=r
        )
        self.targets_active = Gauge(
            PREFIX + "targets_active", "Targets being polled per source.", ["source"], registry=r
        )
        self.target_errors = Counter(
            PREFIX + "target_errors", "Polls of a target that failed.", ["source", "error"], registry=r
        )
        self.gaps = Counter(
            PREFIX + "gaps_detected",
            "Data the API no longer had (recorded as a gap record).",
            ["source"],
            registry=r,
        )
        self.restarts_detected = Counter(
            PREFIX + "log_restarts_detected",
            "Logs that became shorter than the cursor.",
            ["source"],
            registry=r,
        )
        self.logs_drained = Counter(
            PREFIX + "logs_drained",
            "Logs read to their end once their job ended; complete: as long as the API says, no gaps.",
            ["source", "complete"],
            registry=r,
        )
        self.checkpoint_age = Gauge(
            PREFIX + "checkpoint_age_seconds",
            "Seconds since the last checkpoint commit (0 before the first one).",
            registry=r,
        )
        self.checkpoint_age.set_function(self._checkpoint_age)
        self.budget_rate = Gauge(
            PREFIX + "budget_rate_per_second",
            "API calls per second the flow-control budget currently admits (learned, at most the ceiling).",
            ["budget"],
            registry=r,
        )
        self.budget_throttled = Counter(
            PREFIX + "budget_throttled",
            "API calls refused by gateway flow control (429, APIG.0308, ModelArts.6101).",
            ["budget", "error_code"],
            registry=r,
        )
        self.budget_queued = Gauge(
            PREFIX + "budget_queued",
            "Calls waiting for the API budget, by priority.",
            ["budget", "priority"],
            registry=r,
        )
        self.budget_wait = Histogram(
            PREFIX + "budget_wait_seconds",
            "Seconds a target's call waited for the API budget, by priority.",
            ["budget", "priority"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.leases_held = Gauge(
            PREFIX + "leases_held", "Target leases this replica holds (several replicas).", registry=r
        )
        self.replicas_alive = Gauge(
            PREFIX + "replicas_alive", "Replicas with a recent heartbeat in the checkpoint store.", registry=r
        )
        self.lease_changes = Counter(
            PREFIX + "lease_changes",
            "Leases taken, handed off (released at a committed cursor) or lost (expired or moved on).",
            ["change"],
            registry=r,
        )
        self.commits_fenced = Counter(
            PREFIX + "commits_fenced",
            "Cursors not committed because this replica no longer held the target's lease (fencing).",
            registry=r,
        )
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes...

    def _checkpoint_age(self) -> float:
        """Derived at scrape time so the age grows even while nothing commits."""
        last = next(iter(self.checkpoint_last_commit.collect())).samples[0].value
        return max(0.0, time.time() - last) if last > 0 else 0.0


def _sum(metric: Any, label: str, value: str) -> float:
    """Sum of a labelled counter's ``_total`` samples whose ``label`` is ``value``."""
    found = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get(label) == value:
                found += sample.value
    return found


class Health:
    """Failure that needs a human, held for ``unready_after`` seconds, makes ``/readyz`` fail.

    Two kinds: every API call refused for auth (401/403, :class:`~collector_plugin.errors.AuthError`;
    one accepted call clears it, so a job the credential may not read does not count), and the
    checkpoint store refusing every commit. A failure shorter than ``unready_after`` never flips
    readiness. Auth is judged from the metrics, sampled by the listener's thread several times a
    second (:meth:`sample`); commits are reported by :class:`WatchedStore`. Also remembers when
    the collector last acknowledged records, for the status page.
    """

    def __init__(self, metrics: Metrics, unready_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self.unready_after = unready_after
        self._clock = clock
        self._lock = threading.Lock()
        # (ok calls, auth refusals, records exported) at the last sample; the metrics start at 0
        self._seen: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._auth_since: float | None = None
        self._commit_since: float | None = None
        self._commit_error = ""
        self._last_ack: float | None = None

    def sample(self) -> None:
        """Compare the counters with the last sample: a success clears, a refusal alone starts the clock."""
        m = self._metrics
        now_seen = (
            _sum(m.api_requests, "outcome", "ok"),
            _sum(m.target_errors, "error", "AuthError"),
            next(iter(m.records_exported.collect())).samples[0].value,
        )
        now = self._clock()
        with self._lock:
            before, self._seen = self._seen, now_seen
            if now_seen[0] > before[0]:
                self._auth_since = None
            elif now_seen[1] > before[1] and self._auth_since is None:
                self._auth_since = now
            if now_seen[2] > before[2]:
                self._last_ack = now

    def commit_ok(self) -> None:
        with self._lock:
            self._commit_since, self._commit_error = None, ""

    def commit_failed(self, error: str) -> None:
        with self._lock:
            if self._commit_since is None:
                self._commit_since = self._clock()
            self._commit_error = error

    def last_ack_age(self) -> float | None:
        """Seconds since the collector last acknowledged records (as sampled); None before any."""
        with self._lock:
            return None if self._last_ack is None else max(0.0, self._clock() - self._last_ack)

    def check(self) -> tuple[bool, str]:
        """(ready, reason): not ready once a failure above has lasted ``unready_after`` seconds."""
        self.sample()
        now = self._clock()
        with self._lock:
            if self._auth_since is not None and now - self._auth_since >= self.unready_after:
                return (
                    False,
                    f"every API call refused for auth for {now - self._auth_since:.0f}s: check the credentials",
                )
            if self._commit_since is not None and now - self._commit_since >= self.unready_after:
                return False, (
                    f"checkpoint store not writable for {now - self._commit_since:.0f}s: {self._commit_error}"
                )
        return True, "ready"


class _Store(Protocol):
    def get(self, key: str) -> str | None: ...
    def all(self) -> dict[str, str]: ...
    def commit(self, cursors: Mapping[str, str]) -> None: ...
    def close(self) -> None: ...


class WatchedStore:
    """A checkpoint store that tells :class:`Health` whether each commit went through."""

    def __init__(self, store: _Store, health: Health) -> None:
        self.store = store
        self._health = health

    def get(self, key: str) -> str | None:
        return self.store.get(key)

    def all(self) -> dict[str, str]:
        return self.store.all()

    def commit(self, cursors: Mapping[str, str]) -> None:
        try:
            self.store.commit(cursors)
        except Exception as exc:
            self._health.commit_failed(str(exc))
            raise
        if cursors:
            self._health.commit_ok()

    def close(self) -> None:
        self.store.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    tick: Callable[[], None] | None = None

    def service_actions(self) -> None:
        """Called by ``serve_forever`` every poll interval: samples :class:`Health`."""
        if self.tick is not None:
            try:
                self.tick()
            except Exception:  # a broken sampler must not stop the listener
                _log.exception("telemetry tick failed")


class TelemetryServer:
    """``/metrics``, ``/healthz``, ``/readyz``, ``/status`` and ``/status.json`` on a small threaded server.

    It runs in its own daemon thread so a scrape is answered even while the event loop is busy
    catching up. ``ready`` is called on every ``/readyz`` and returns (ready, reason); the reason
    is the 503 body that tells an operator what is missing. ``status`` returns the status document
    (:mod:`collector_plugin.status`); without it the status pages answer 404. ``tick`` is called
    several times a second from the server's thread (the :class:`Health` sampler). ``listen`` ""
    disables the server.
    """

    def __init__(
        self,
        listen: str,
        metrics: Metrics,
        ready: Callable[[], tuple[bool, str]],
        status: Callable[[], Mapping[str, Any]] | None = None,
        tick: Callable[[], None] | None = None,
    ) -> None:
        self.listen = listen
        self.metrics = metrics
        self.ready = ready
        self.status = status
        self.tick = tick
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.listen.strip())

    @property
    def port(self) -> int | None:
        """The bound port (the real one when ``listen`` asked for port 0); None when not running."""
        return None if self._server is None else int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL for a client on this host (``http://127.0.0.1:PORT`` for a wildcard bind)."""
        if self._server is None:
            raise RuntimeError("the telemetry server is not running")
        host = str(self._server.server_address[0])
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1" if host != "::" else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind and serve in a daemon thread; a no-op when disabled or already running."""
        if not self.enabled or self._server is not None:
            return
        from collector_plugin.config import parse_listen_address  # config (yaml, its models) only once serving

        host, port = parse_listen_address(self.listen)
        server_cls: type[_Server] = _Server
        if ":" in host:
            server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        try:
            self._server = server_cls((host, port), self._handler_class())
            self._server.tick = self.tick
        except OSError as exc:  # port taken, address not on this host, no permission
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise ReceiverError(f"telemetry.listen: cannot listen on {shown}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="telemetry-http",
            kwargs={"poll_interval": 0.2},
            daemon=True,
        )
        self._thread.start()
        _log.info("telemetry listening", extra={"listen": f"{host}:{self.port}"})

    def stop(self) -> None:
        """Stop serving and release the port."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> TelemetryServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _readiness(self) -> tuple[bool, str]:
        try:
            ok, reason = self.ready()
        except Exception as exc:  # a broken check means "not ready", never a 500 loop
            return False, f"readiness check failed: {type(exc).__name__}"
        return bool(ok), redact(reason)  # an export error may quote a header or a signed URL

    def _status(self) -> tuple[int, Mapping[str, Any] | str]:
        if self.status is None:
            return 404, "not found: no status provider\n"
        try:
            return 200, self.status()
        except Exception as exc:  # e.g. the event loop did not answer in time
            return 503, f"status unavailable: {type(exc).__name__}\n"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "modelarts-receiver"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(owner.metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    ok, reason = owner._readiness()
                    body = (reason or ("ready" if ok else "not ready")) + "\n"
                    self._send(200 if ok else 503, body.encode())
                elif path in ("/status", "/status.json"):
                    code, doc = owner._status()
                    if isinstance(doc, str):
                        self._send(code, doc.encode())
                    elif path == "/status":
                        self._send(code, render_html(doc).encode(), "text/html; charset=utf-8")
                    else:
                        self._send(code, json.dumps(doc).encode(), "application/json")
                else:
                    self._send(404, b"not found: try /metrics, /healthz, /readyz, /status or /status.json\n")

            def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                _log.debug("telemetry request: " + format, *args)

        return Handler


class SourceCounters:
    """The :class:`~collector_plugin.source.SourceMetrics` of one source, over the receiver's metrics."""

    def __init__(self, metrics: Metrics, source: str) -> None:
        self._gaps = metrics.gaps.labels(source)
        self._restarts = metrics.restarts_detected.labels(source)
        self._drained = {c: metrics.logs_drained.labels(source, str(c).lower()) for c in (True, False)}

    def gap(self) -> None:
        self._gaps.inc()

    def restart(self) -> None:
        self._restarts.inc()

    def log_complete(self, complete: bool) -> None:
        self._drained[complete].inc()
