"""A Loki stand-in for tests: an OTLP/HTTP logs endpoint that stores what it gets as Loki would.

What a user sees in Grafana is Loki's view, not our export: records become entries of streams,
and identical entries collapse. :class:`LokiView` applies the rules of grafana/loki
(``pkg/loghttp/push/otlp.go``, ``otlplabels/labels.go``, ``pkg/distributor/validator.go``,
``pkg/ingester/stream.go``; summed up in shared/LOKI.md):

- stream labels: the resource attributes of Loki's *default* index list, names normalised
  (``.`` and anything outside ``[a-zA-Z0-9_]`` become ``_``); ``service_name="unknown_service"``
  when there is no ``service.name``;
- the entry's timestamp: ``time_unix_nano``, else ``observed_time_unix_nano``, else now;
- the line: the body as ``pcommon.Value.AsString`` renders it (maps and lists as JSON);
- structured metadata: the other resource attributes, scope name/version, the record's
  attributes (maps flattened with ``_``), ``observed_timestamp`` (only when both times are set),
  ``severity_number``, ``severity_text``, ``flags``, ``trace_id``, ``span_id``, ``event_name``;
- limits: a line over 256,000 bytes, metadata over 64,000 bytes or 128 entries is discarded
  and counted; the request then answers 400, the valid entries kept (Loki's distributor does so);
- dedup: an entry equal to a kept one of its stream in timestamp, line and structured metadata
  is dropped (the ingester's head block, and the querier's merge across chunks and replicas).

Not modelled: rate limits and the time windows (too old, too far behind, in the future) — the
simulator's event times lie years back on purpose.

:class:`LokiSink` serves a view on 127.0.0.1 in a thread and can store a batch but acknowledge it
late (:meth:`LokiSink.hold`, or ``ack_delay``), so a receiver killed meanwhile sends it again.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

# pkg/loghttp/push/otlplabels/config.go: GlobalOTLPConfig.RegisterFlags
DEFAULT_INDEX_LABELS: tuple[str, ...] = (
    "service.name",
    "service.namespace",
    "service.instance.id",
    "deployment.environment",
    "deployment.environment.name",
    "cloud.region",
    "cloud.availability_zone",
    "k8s.cluster.name",
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.container.name",
    "container.name",
    "k8s.replicaset.name",
    "k8s.deployment.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.cronjob.name",
    "k8s.job.name",
)
MAX_LINE_BYTES = 256_000  # max_line_size: 256KB, and Loki's KB is 1000 bytes
MAX_METADATA_BYTES = 64_000  # max_structured_metadata_size: 64KB
MAX_METADATA_ENTRIES = 128  # max_structured_metadata_entries_count
GUARD = 60.0  # seconds: a held request answers by then even if never released (no hung test)

Labels = tuple[tuple[str, str], ...]
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


class Entry(NamedTuple):
    """One Loki entry; ``metadata`` sorted by name, as Loki's symbolizer compares it."""

    timestamp_ns: int
    line: str
    metadata: Labels

    def meta(self, name: str) -> str | None:
        """The value of structured metadata ``name`` (None when absent)."""
        return next((v for k, v in self.metadata if k == name), None)


@dataclass(frozen=True)
class Rejection:
    """An entry Loki's distributor discarded, and why (``line_too_long``, ...)."""

    labels: Labels
    reason: str
    line_bytes: int
    offset: str | None


def label_name(key: str) -> str:
    """``otlptranslator.LabelNamer.Build``: invalid characters become ``_``; a leading digit or
    single ``_`` gets a ``key`` prefix."""
    name = _INVALID.sub("_", key)
    if name and name[0].isdigit():
        return "key_" + name
    if name.startswith("_") and not name.startswith("__"):
        return "key" + name
    return name


def go_float(value: float) -> str:
    """A double as ``pcommon``'s ``float64AsString`` writes it (ES6 number to string)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    shortest = repr(value)  # the shortest digits that read back the same, as Go's precision -1
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        mantissa, exponent = shortest.split("e")
        return f"{mantissa}e{int(exponent):+d}"
    text = format(Decimal(shortest), "f")
    return text.removesuffix(".0")


def _raw(value: AnyValue) -> Any:
    """``Value.AsRaw``: what Go's JSON encoder sees of a nested value."""
    kind = value.WhichOneof("value")
    if kind == "kvlist_value":
        return {kv.key: _raw(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [_raw(v) for v in value.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind is None:
        return None
    return getattr(value, kind)


def _go_json(raw: Any) -> str:
    """``json.Encoder`` with HTML escaping off: sorted keys, no spaces, Go's float format."""
    if isinstance(raw, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_go_json(raw[k])}" for k in sorted(raw)) + "}"
    if isinstance(raw, list):
        return "[" + ",".join(_go_json(v) for v in raw) + "]"
    if isinstance(raw, float):
        return go_float(raw)
    return json.dumps(raw, ensure_ascii=False)


def any_value_string(value: AnyValue) -> str:
    """``pcommon.Value.AsString``: how Loki turns a body or an attribute value into text."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return go_float(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind in ("kvlist_value", "array_value"):
        return _go_json(_raw(value))
    return ""


def attribute_labels(key: str, value: AnyValue, prefix: str = "") -> list[tuple[str, str]]:
    """``AttributeToLabels``: one pair, or a map flattened recursively (``parent_child``)."""
    name = label_name(f"{prefix}_{key}" if prefix else key)
    if value.WhichOneof("value") == "kvlist_value":
        return [pair for kv in value.kvlist_value.values for pair in attribute_labels(kv.key, kv.value, name)]
    return [(name, any_value_string(value))]


def record_metadata(record: Any) -> list[tuple[str, str]]:
    """``LogAttrsToLabels``: the record's own structured metadata (attributes, then fields)."""
    out: list[tuple[str, str]] = []
    for kv in record.attributes:
        if kv.key == "event_name" and record.event_name:
            continue  # the first-class EventName wins over an attribute of that name
        out.extend(attribute_labels(kv.key, kv.value))
    if record.time_unix_nano and record.observed_time_unix_nano:
        out.append(("observed_timestamp", str(record.observed_time_unix_nano)))
    if record.severity_number:
        out.append(("severity_number", str(record.severity_number)))
    if record.severity_text:
        out.append(("severity_text", record.severity_text))
    if record.dropped_attributes_count:
        out.append(("dropped_attributes_count", str(record.dropped_attributes_count)))
    if record.flags:
        out.append(("flags", str(record.flags)))
    if record.trace_id.strip(b"\0"):
        out.append(("trace_id", record.trace_id.hex()))
    if record.span_id.strip(b"\0"):
        out.append(("span_id", record.span_id.hex()))
    if record.event_name:
        out.append(("event_name", record.event_name))
    return out


def entry_timestamp(record: Any, now_ns: int) -> int:
    """``timestampFromLogRecord``: the record's time, else its observed time, else now."""
    return int(record.time_unix_nano or record.observed_time_unix_nano or now_ns)


def to_entries(
    request: ExportLogsServiceRequest,
    *,
    index_labels: Iterable[str] = DEFAULT_INDEX_LABELS,
    now_ns: Callable[[], int] = time.time_ns,
) -> Iterator[tuple[Labels, Entry]]:
    """Each record of ``request`` as (stream labels, entry), in request order."""
    indexed = frozenset(index_labels)
    for resource_logs in request.resource_logs:
        labels: dict[str, str] = {}
        resource_meta: list[tuple[str, str]] = []
        for kv in resource_logs.resource.attributes:
            pairs = attribute_labels(kv.key, kv.value)
            if kv.key in indexed:
                labels.update(pairs)
            else:
                resource_meta.extend(pairs)
        if not labels.get("service_name"):
            labels["service_name"] = "unknown_service"  # discover_service_name found nothing
        stream = tuple(sorted(labels.items()))
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope
            scope_meta = [(label_name(kv.key), any_value_string(kv.value)) for kv in scope.attributes]
            scope_meta += [(k, v) for k, v in (("scope_name", scope.name), ("scope_version", scope.version)) if v]
            for record in scope_logs.log_records:
                metadata = tuple(sorted(record_metadata(record) + resource_meta + scope_meta))
                yield stream, Entry(entry_timestamp(record, now_ns()), any_value_string(record.body), metadata)


def rejection_reason(entry: Entry) -> str | None:
    """Why the distributor's ``ValidateEntry`` would discard ``entry`` (None: it is kept)."""
    if len(entry.line.encode()) > MAX_LINE_BYTES:
        return "line_too_long"
    if sum(len(k) + len(v) for k, v in entry.metadata) > MAX_METADATA_BYTES:
        return "structured_metadata_too_large"
    if len(entry.metadata) > MAX_METADATA_ENTRIES:
        return "structured_metadata_too_many"
    return None


@dataclass
class LokiView:
    """Loki's store in memory: streams of entries, each kept once."""

    index_labels: tuple[str, ...] = DEFAULT_INDEX_LABELS
    streams: dict[Labels, list[Entry]] = field(default_factory=dict)
    received: int = 0  # raw records, every copy
    deduplicated: int = 0  # copies dropped as equal to a kept entry
    rejected: list[Rejection] = field(default_factory=list)
    _kept: dict[Labels, set[Entry]] = field(default_factory=dict)

    def push(self, payload: bytes) -> list[str]:
        """Store one ``ExportLogsServiceRequest``; the errors Loki would answer (400) with."""
        request = ExportLogsServiceRequest()
        request.ParseFromString(payload)
        errors: list[str] = []
        for labels, entry in to_entries(request, index_labels=self.index_labels):
            self.received += 1
            reason = rejection_reason(entry)
            if reason is not None:
                self.rejected.append(
                    Rejection(labels, reason, len(entry.line.encode()), entry.meta("modelarts_log_offset"))
                )
                errors.append(f"{reason}: stream {dict(labels)} entry of {len(entry.line.encode())} bytes")
                continue
            kept = self._kept.setdefault(labels, set())
            if entry in kept:
                self.deduplicated += 1
                continue
            kept.add(entry)
            self.streams.setdefault(labels, []).append(entry)
        return errors

    def select(self, **matchers: str) -> dict[Labels, list[Entry]]:
        """The streams whose labels include ``matchers`` (a LogQL ``{a="b"}`` selector), entries
        in timestamp order as a forward query returns them (equal timestamps in arrival order)."""
        return {
            labels: sorted(entries, key=lambda e: e.timestamp_ns)
            for labels, entries in self.streams.items()
            if all(dict(labels).get(k) == v for k, v in matchers.items())
        }

    @property
    def entry_count(self) -> int:
        return sum(len(e) for e in self.streams.values())


class LokiSink:
    """A :class:`LokiView` behind ``POST /v1/logs`` on 127.0.0.1, served from a thread.

    Every request is stored first, then answered: at once, after ``ack_delay`` seconds, or, while
    :meth:`hold` is in force, only on :meth:`release` (at the latest after :data:`GUARD`).
    ``held`` counts requests stored and not yet answered: a receiver killed then never saw
    their acknowledgement.
    """

    def __init__(self, *, ack_delay: float = 0.0, index_labels: tuple[str, ...] = DEFAULT_INDEX_LABELS) -> None:
        self.view = LokiView(index_labels)
        self.ack_delay = ack_delay
        self.requests = 0  # requests stored
        self.held = 0  # stored, answer not sent yet
        self._hold_after: int | None = None
        self._lock = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the sink first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/logs"

    def start(self) -> LokiSink:
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="loki-sink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> LokiSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def hold(self, after: int = 0) -> None:
        """Answer no request beyond the first ``after`` more stored from now until :meth:`release`."""
        with self._lock:
            self._hold_after = self.requests + after

    def release(self) -> None:
        with self._lock:
            self._hold_after = None
            self._lock.notify_all()

    def wait_for(self, predicate: Callable[[LokiSink], bool], what: str, timeout: float = GUARD) -> None:
        """Block until ``predicate(self)`` holds (checked on every stored request); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
                self._lock.wait(min(left, 0.2))

    def snapshot(self) -> dict[str, Any]:
        """Counts for a test's failure message."""
        with self._lock:
            view = self.view
            return {
                "requests": self.requests,
                "held": self.held,
                "received": view.received,
                "entries": view.entry_count,
                "deduplicated": view.deduplicated,
                "rejected": len(view.rejected),
                "streams": len(view.streams),
            }

    def _store(self, payload: bytes) -> tuple[list[str], int]:
        with self._lock:
            errors = self.view.push(payload)
            self.requests += 1
            self.held += 1
            self._lock.notify_all()
            return errors, self.requests

    def _await_release(self, number: int) -> None:
        if self.ack_delay:
            time.sleep(self.ack_delay)  # the sink's behaviour under test, not a wait of the test
        deadline = time.monotonic() + GUARD
        with self._lock:
            while self._hold_after is not None and number > self._hold_after and time.monotonic() < deadline:
                self._lock.wait(0.2)

    def _answered(self) -> None:
        with self._lock:
            self.held -= 1
            self._lock.notify_all()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A receiver killed mid-request resets its connection: expected here, not worth a trace."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(sink: LokiSink) -> type[BaseHTTPRequestHandler]:
    ok = ExportLogsServiceResponse().SerializeToString()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                data = gzip.decompress(data)
            errors, number = sink._store(data)
            try:
                sink._await_release(number)
                if errors:
                    self._send(400, "; ".join(errors[:5]).encode(), "text/plain")
                else:
                    self._send(200, ok, "application/x-protobuf")
            except OSError:
                pass  # the receiver died while we held its answer: that is the point
            finally:
                sink._answered()

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def streams_by(view: LokiView, label: str) -> Mapping[str, list[Entry]]:
    """The view's streams by the value of one label (e.g. ``service_instance_id``)."""
    return {dict(labels).get(label, ""): entries for labels, entries in view.select().items()}
