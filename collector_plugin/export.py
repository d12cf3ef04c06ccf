"""Delivery: OTLP transports, and the pipeline that batches, retries, acknowledges and commits.

    put(span) ──► encode each record once ──► pending (bounded: put waits when full)
                                                  │ batcher: max_records / max_bytes / max_delay
                                                  ▼
                           up to max_in_flight sends, each retried with backoff until acknowledged
                                                  │
                                                  ▼ in queue order
                        CheckpointStore.commit(latest cursor per target of fully acked spans)

The invariant (shared/ARCHITECTURE.md): a cursor is committed only once every record of its span
and of every earlier span was acknowledged. Nothing is dropped: a collector that is down is
retried forever while sources wait on the full queue. The one exception is a record the collector
refuses for good (HTTP 400, gRPC INVALID_ARGUMENT): the batch is split until that record stands
alone, which is then reported (error log with target and uid, ``records_rejected``) and skipped.

Order: with ``max_in_flight`` > 1 two batches travel at once and the collector may receive the
later one first (OTLP promises no order). While a batch is failing, later batches wait for it,
so after an outage the backlog arrives in queue order. ``max_in_flight: 1`` gives strict order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import grpc
import httpx

from collector_plugin.backoff import Backoff, parse_retry_after
from collector_plugin.checkpoint import CursorStore
from collector_plugin.config import BatchConfig, ExporterConfig
from collector_plugin.errors import ConfigError, ExportError, ReceiverError
from collector_plugin.otlp import SCOPE_NAME, OtlpEncoder, encode_framed_log_record
from collector_plugin.records import Attributes, Span
from collector_plugin.telemetry import Metrics

log = logging.getLogger("collector_plugin.export")

GRPC_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"
LOGS_PATH = "/v1/logs"
# Framing bytes per request beyond the records themselves (resource/scope headers are added apart).
_REQUEST_OVERHEAD = 64


class RetryableExportError(ReceiverError):
    """The collector could not take the batch now (down, overloaded, throttling): try again later.

    ``reason`` is a short label for the ``export_failures`` metric; ``retry_after`` is the delay
    the collector asked for, if any.
    """

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{reason}: {detail}" if detail else reason)


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExporterSettings:
    """The resolved exporter settings: config, then ``OTEL_EXPORTER_OTLP_*``, then defaults.

    ``endpoint`` is the full URL (for HTTP, including ``/v1/logs``). ``headers`` may hold
    credentials and is left out of ``repr``.
    """

    protocol: str
    endpoint: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    compression: str = "gzip"
    timeout: float = 10.0
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


def _env(environ: Mapping[str, str], name: str) -> str | None:
    """The logs-specific variable if set, else the generic one (empty counts as unset)."""
    for key in (f"OTEL_EXPORTER_OTLP_LOGS_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        value = environ.get(key, "").strip()
        if value:
            return value
    return None


def parse_headers(text: str) -> dict[str, str]:
    """Parse ``k=v,k2=v2`` (W3C baggage style, percent-encoded); malformed entries are skipped."""
    headers: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = unquote(key.strip()).strip()
        if not sep or not key:
            continue
        headers[key.lower()] = unquote(value.strip()).strip()
    return headers


def _append_logs_path(url: str) -> str:
    parts = urlsplit(url)
    if parts.path.rstrip("/").endswith(LOGS_PATH):
        return url
    return parts._replace(path=parts.path.rstrip("/") + LOGS_PATH).geturl()


def _resolve_endpoint(cfg: ExporterConfig, explicit: set[str], environ: Mapping[str, str], protocol: str) -> str:
    if "endpoint" in explicit and cfg.endpoint:
        return _append_logs_path(cfg.endpoint) if protocol == "http/protobuf" else cfg.endpoint
    logs_endpoint = environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "").strip()
    if logs_endpoint:
        return logs_endpoint
    generic = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if protocol == "http/protobuf":
        return _append_logs_path(generic or DEFAULT_HTTP_ENDPOINT)
    return generic or DEFAULT_GRPC_ENDPOINT


def _env_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ConfigError([f"OTEL_EXPORTER_OTLP_{name}: expected true or false, got {value!r}"], "environment")


def resolve_exporter(cfg: ExporterConfig, environ: Mapping[str, str]) -> ExporterSettings:
    """Resolve the effective settings: keys set in the config file win, then the standard
    ``OTEL_EXPORTER_OTLP_[LOGS_]*`` variables, then the defaults."""
    explicit = set(cfg.model_fields_set)
    tls_explicit = set(cfg.tls.model_fields_set) if "tls" in explicit else set()
    problems: list[str] = []

    protocol = cfg.protocol
    if "protocol" not in explicit and (env_protocol := _env(environ, "PROTOCOL")):
        if env_protocol not in ("grpc", "http/protobuf"):
            problems.append(f"OTEL_EXPORTER_OTLP_PROTOCOL: {env_protocol!r} is not supported (grpc, http/protobuf)")
        else:
            protocol = env_protocol  # type: ignore[assignment]

    compression: str = cfg.compression
    if "compression" not in explicit and (env_compression := _env(environ, "COMPRESSION")):
        if env_compression not in ("gzip", "none"):
            problems.append(f"OTEL_EXPORTER_OTLP_COMPRESSION: {env_compression!r} is not supported (gzip, none)")
        else:
            compression = env_compression

    timeout = float(cfg.timeout)
    if "timeout" not in explicit and (env_timeout := _env(environ, "TIMEOUT")):
        try:
            timeout = float(env_timeout) / 1000.0
        except ValueError:
            problems.append(f"OTEL_EXPORTER_OTLP_TIMEOUT: expected milliseconds, got {env_timeout!r}")
    if problems:
        raise ConfigError(problems, "environment")

    headers = dict(cfg.headers)
    if "headers" not in explicit and (env_headers := _env(environ, "HEADERS")):
        headers = parse_headers(env_headers)

    def tls_value(key: str, env_name: str) -> str | None:
        value: str | None = getattr(cfg.tls, key)
        if key in tls_explicit:
            return value
        return _env(environ, env_name) or value

    insecure = cfg.tls.insecure
    if "insecure" not in tls_explicit and (env_insecure := _env(environ, "INSECURE")):
        insecure = _env_bool(env_insecure, "INSECURE")

    return ExporterSettings(
        protocol=protocol,
        endpoint=_resolve_endpoint(cfg, explicit, environ, protocol),
        headers=headers,
        compression=compression,
        timeout=timeout,
        ca_file=tls_value("ca_file", "CERTIFICATE"),
        cert_file=tls_value("cert_file", "CLIENT_CERTIFICATE"),
        key_file=tls_value("key_file", "CLIENT_KEY"),
        insecure=insecure,
    )


# --- transports ----------------------------------------------------------------------------------


class Transport(Protocol):
    """Sends one encoded ``ExportLogsServiceRequest``.

    ``send`` returns how many records the collector rejected through ``partial_success`` (0
    normally); raises :class:`RetryableExportError` when trying again may help, and
    :class:`~collector_plugin.errors.ExportError` when the collector refuses the request for good.
    """

    async def send(self, payload: bytes, nrecords: int) -> int: ...

    async def close(self) -> None: ...


def rejected_in_response(body: bytes) -> int:
    """``partial_success.rejected_log_records`` of an ``ExportLogsServiceResponse`` (0 if absent)."""
    if not body:
        return 0
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

    response = ExportLogsServiceResponse()
    try:
        response.ParseFromString(body)
    except Exception:  # a body we cannot read is not a rejection
        return 0
    return int(response.partial_success.rejected_log_records)


def gzip_compress(payload: bytes) -> bytes:
    """gzip at level 1: ~8x smaller for log text, several times cheaper than the SDK's level 9."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return compressor.compress(payload) + compressor.flush()


# HTTP statuses where retrying is right; 400 and 413 are about the payload (split it), and any
# other status (401, 403, 404, 5xx) is a collector or config problem: retry loudly, never drop.
_HTTP_PERMANENT = frozenset({400, 413})
_INLINE_GZIP_LIMIT = 64 * 1024


def safe_url(url: str) -> str:
    """``url`` without user info or query string, fit for logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


class HttpTransport:
    """OTLP/HTTP with a protobuf body (httpx)."""

    def __init__(self, settings: ExporterSettings, client: httpx.AsyncClient | None = None) -> None:
        self.url = settings.endpoint
        self._shown_url = safe_url(settings.endpoint)
        self._gzip = settings.compression == "gzip"
        headers = {"Content-Type": "application/x-protobuf", "User-Agent": "modelarts-otel-receiver"}
        headers.update(settings.headers)
        if self._gzip:
            headers["Content-Encoding"] = "gzip"
        self._headers = headers
        if client is None:
            verify: bool | str = True
            if settings.insecure:
                verify = False
            elif settings.ca_file:
                verify = settings.ca_file
            cert = (settings.cert_file, settings.key_file) if settings.cert_file else None
            client = httpx.AsyncClient(
                verify=verify,
                cert=cert,  # type: ignore[arg-type]
                timeout=settings.timeout,
                limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
            )
        self._client = client

    async def send(self, payload: bytes, nrecords: int) -> int:
        if not self._gzip:
            body = payload
        elif len(payload) < _INLINE_GZIP_LIMIT:
            body = gzip_compress(payload)
        else:  # zlib releases the GIL: large bodies compress on another core, off the event loop
            body = await asyncio.to_thread(gzip_compress, payload)
        try:
            response = await self._client.post(self.url, content=body, headers=self._headers)
        except httpx.TimeoutException as exc:
            raise RetryableExportError("timeout", type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise RetryableExportError("connection", f"{type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return rejected_in_response(response.content)
        detail = f"HTTP {status} from {self._shown_url}"
        if status in _HTTP_PERMANENT:
            raise ExportError(f"{detail}: {_short(response.text)}")
        raise RetryableExportError(
            f"http_{status}", detail, retry_after=parse_retry_after(response.headers.get("retry-after"))
        )

    async def close(self) -> None:
        await self._client.aclose()


_GRPC_PERMANENT = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.FAILED_PRECONDITION}
)


class GrpcTransport:
    """OTLP/gRPC: one unary call per batch, the request passed as raw bytes (no re-serialising).

    A ``grpc.aio`` channel belongs to the event loop it was made in, so the channel is made on the
    first send, inside the loop that uses it (and made again if a later send runs in another loop).
    """

    def __init__(self, settings: ExporterSettings) -> None:
        parts = urlsplit(settings.endpoint if "://" in settings.endpoint else f"//{settings.endpoint}")
        self.target = parts.netloc or settings.endpoint
        self._settings = settings
        self._secure = parts.scheme == "https" or (parts.scheme == "" and not settings.insecure)
        self._metadata = tuple((k.lower(), v) for k, v in settings.headers.items())
        self._timeout = settings.timeout
        self._compression = grpc.Compression.Gzip if settings.compression == "gzip" else grpc.Compression.NoCompression
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _connect(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._channel is not None and self._loop is loop:
            return self._call
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()
        options = [
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # A collector that restarts should be found again within seconds, not minutes.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        if self._secure:
            channel = grpc.aio.secure_channel(self.target, _grpc_credentials(self._settings), options=options)
        else:
            channel = grpc.aio.insecure_channel(self.target, options=options)
        self._channel, self._loop = channel, loop
        self._call = channel.unary_unary(GRPC_METHOD, request_serializer=None, response_deserializer=None)
        return self._call

    async def send(self, payload: bytes, nrecords: int) -> int:
        call = await self._connect()
        try:
            response = await call(
                payload, timeout=self._timeout, metadata=self._metadata or None, compression=self._compression
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            detail = f"gRPC {code.name} from {self.target}: {_short(exc.details() or '')}"
            if code in _GRPC_PERMANENT:
                raise ExportError(detail) from exc
            raise RetryableExportError(f"grpc_{code.name.lower()}", detail) from exc
        return rejected_in_response(response)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()


def _grpc_credentials(settings: ExporterSettings) -> grpc.ChannelCredentials:
    def read(path: str | None) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as fh:
            return fh.read()

    return grpc.ssl_channel_credentials(
        root_certificates=read(settings.ca_file),
        private_key=read(settings.key_file),
        certificate_chain=read(settings.cert_file),
    )


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def make_transport(settings: ExporterSettings) -> Transport:
    """The transport for ``settings.protocol``."""
    if settings.protocol == "grpc":
        return GrpcTransport(settings)
    if settings.protocol == "http/protobuf":
        return HttpTransport(settings)
    raise ConfigError([f"exporter.protocol: {settings.protocol!r} is not supported (grpc, http/protobuf)"])


# --- pipeline ------------------------------------------------------------------------------------


class _Entry:
    """A queued span: its records encoded once, how many were batched, how many acknowledged.

    The records themselves are not kept (only their uids, to report a refused one): the encoded
    bytes are all delivery needs, and fewer live objects keep memory and GC time down.
    """

    __slots__ = ("acked", "cursor", "framed", "nbytes", "sent", "service", "services", "target", "uids")

    def __init__(self, span: Span, framed: list[bytes]) -> None:
        records = span.records
        self.target = span.target
        self.cursor = span.cursor
        self.framed = framed
        self.uids = [r.uid for r in records]
        first = records[0].service if records else ""
        # One service per span is the rule; a per-record list only for the rare mixed span.
        self.service: str | None = first if all(r.service == first for r in records) else None
        self.services: list[str] = [] if self.service is not None else [r.service for r in records]
        self.nbytes = sum(map(len, framed))
        self.sent = 0
        self.acked = 0


@dataclass(slots=True)
class _Batch:
    """Slices ``(entry, start, stop)`` of queued spans sent as one request."""

    slices: list[tuple[_Entry, int, int]]
    nrecords: int
    seq: int


class Pipeline:
    """Bounded queue -> batches -> transport, and in-order checkpoint commits after acknowledgement."""

    def __init__(
        self,
        transport: Transport,
        store: CursorStore,
        resource_for: Callable[[str], Attributes],
        *,
        batch: BatchConfig,
        queue_size: int,
        max_in_flight: int,
        retry_initial: float,
        retry_max: float,
        metrics: Metrics,
        scope_version: str = "",
        scope_name: str = SCOPE_NAME,
    ) -> None:
        self._transport = transport
        self._store = store
        self._encoder = OtlpEncoder(resource_for, scope_name, scope_version)
        self._max_records = batch.max_records
        self._max_bytes = batch.max_bytes
        self._max_delay = float(batch.max_delay)
        self._queue_size = queue_size
        self._max_in_flight = max_in_flight
        self._retry = Backoff(initial=retry_initial, maximum=retry_max, max_attempts=0)
        self._metrics = metrics

        self._entries: deque[_Entry] = deque()  # every span not yet committed, in queue order
        self._pending: deque[_Entry] = deque()  # entries with records not yet handed to a batch
        self._pending_records = 0
        self._pending_bytes = 0
        self._held = 0  # records put and not yet acknowledged
        self._first_pending_at = 0.0
        self._changed = asyncio.Event()  # pending grew, or a flush was asked for
        self._space = asyncio.Condition()
        self._settled = asyncio.Condition()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._senders: set[asyncio.Task[None]] = set()
        self._batcher: asyncio.Task[None] | None = None
        self._flushing = 0
        self._closing = False
        self._uncommitted: dict[str, str] = {}
        self._next_seq = 0
        self._failing: set[int] = set()  # batches whose last attempt failed (retryable)
        self._order = asyncio.Condition()

        self.last_export_ok: bool | None = None
        self.last_error: str = ""

    # -- lifecycle

    async def start(self) -> None:
        """Start the batcher task (call from the running event loop)."""
        if self._batcher is None:
            self._batcher = asyncio.get_running_loop().create_task(self._run_batcher(), name="export-batcher")

    async def put(self, span: Span) -> None:
        """Queue ``span``; waits while the queue holds ``queue_size`` records (backpressure)."""
        if self._closing:
            raise RuntimeError("pipeline is closed")
        if self._batcher is None:
            raise RuntimeError("pipeline not started")
        framed = [encode_framed_log_record(r) for r in span.records]
        n = len(framed)
        if n:
            async with self._space:
                await self._space.wait_for(lambda: self._held == 0 or self._held + n <= self._queue_size)
        entry = _Entry(span, framed)
        self._entries.append(entry)
        if n:
            self._held += n
            self._metrics.queue_records.set(self._held)
            if not self._pending:
                self._first_pending_at = time.monotonic()
            self._pending.append(entry)
            self._pending_records += n
            self._pending_bytes += entry.nbytes
            self._changed.set()
        else:
            await self._commit_ready()
        # Give the batcher and the senders a turn: a producer that never waits would otherwise
        # hold the loop until the queue is full, and acknowledgements would queue up behind it.
        await asyncio.sleep(0)

    async def flush(self, timeout: float) -> bool:
        """Send everything queued now and wait until it is acknowledged and committed."""
        self._flushing += 1
        self._changed.set()
        try:
            async with self._settled:
                await asyncio.wait_for(self._settled.wait_for(self._is_settled), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._flushing -= 1

    async def close(self, timeout: float) -> bool:
        """Stop taking spans, deliver and commit what is held within ``timeout``, then stop.

        Returns False if some records were still unacknowledged when the time ran out (their
        cursors stay uncommitted, so they are read again after a restart).
        """
        self._closing = True
        done = await self.flush(timeout) if self._batcher is not None else self._is_settled()
        tasks = [t for t in (self._batcher, *self._senders) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._batcher = None
        await self._commit_ready()
        await self._transport.close()
        return done

    def _is_settled(self) -> bool:
        return self._held == 0 and not self._entries and not self._uncommitted

    @property
    def queued_records(self) -> int:
        """Records put and not yet acknowledged."""
        return self._held

    # -- batching

    async def _run_batcher(self) -> None:
        while True:
            if not self._pending:
                self._changed.clear()
                await self._changed.wait()
                continue
            if not self._batch_due():
                self._changed.clear()
                wait = self._first_pending_at + self._max_delay - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), wait)
                    continue
            await self._slots.acquire()
            batch = self._take_batch()
            if batch is None:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._deliver(batch))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    def _batch_due(self) -> bool:
        return (
            self._flushing > 0
            or self._closing
            or self._pending_records >= self._max_records
            or self._pending_bytes + _REQUEST_OVERHEAD >= self._max_bytes
            or time.monotonic() - self._first_pending_at >= self._max_delay
        )

    def _take_batch(self) -> _Batch | None:
        """Cut the next batch from the head of the pending queue, within the count and byte limits."""
        slices: list[tuple[_Entry, int, int]] = []
        count = 0
        budget = self._max_bytes - _REQUEST_OVERHEAD
        services: set[str] = set()
        while self._pending and count < self._max_records:
            entry = self._pending[0]
            framed = entry.framed
            start = stop = entry.sent
            limit = min(len(framed), start + self._max_records - count)
            if entry.service is not None:
                budget -= self._service_overhead(entry.service, services)
            while stop < limit:
                size = len(framed[stop])
                if entry.service is None:
                    size += self._service_overhead(entry.services[stop], services)
                if size > budget and (count or stop > start):
                    break
                budget -= size
                stop += 1
            if stop > start:
                slices.append((entry, start, stop))
                count += stop - start
                self._pending_records -= stop - start
                self._pending_bytes -= sum(map(len, framed[start:stop]))
                entry.sent = stop
            if stop < len(framed):
                break
            self._pending.popleft()
            if self._pending:
                self._first_pending_at = time.monotonic()
        if not slices:
            return None
        self._next_seq += 1
        return _Batch(slices, count, self._next_seq)

    def _service_overhead(self, service: str, seen: set[str]) -> int:
        """Bytes a service's first record adds to a request (its ResourceLogs and ScopeLogs headers)."""
        if service in seen:
            return 0
        seen.add(service)
        return len(self._encoder.resource(service)) + len(self._encoder.scope) + 16

    def _payload(self, slices: Sequence[tuple[_Entry, int, int]]) -> bytes:
        by_service: dict[str, list[bytes]] = {}
        for entry, start, stop in slices:
            if entry.service is not None:
                by_service.setdefault(entry.service, []).extend(entry.framed[start:stop])
                continue
            for i in range(start, stop):
                by_service.setdefault(entry.services[i], []).append(entry.framed[i])
        return self._encoder.assemble(by_service)

    # -- delivery

    async def _deliver(self, batch: _Batch) -> None:
        try:
            await self._send_until_done(batch.slices, batch.nrecords, batch.seq)
            await self._acknowledge(batch.slices)
        finally:
            self._slots.release()

    async def _send_until_done(self, slices: list[tuple[_Entry, int, int]], nrecords: int, seq: int) -> None:
        """Send ``slices``; retry forever on retryable errors; split on a permanent refusal."""
        payload = self._payload(slices)
        attempt = 0
        while True:
            await self._wait_turn(seq)
            started = time.monotonic()
            try:
                rejected = await self._transport.send(payload, nrecords)
            except RetryableExportError as exc:
                self._failing.add(seq)
                attempt += 1
                delay = self._retry.delay(attempt, exc.retry_after)
                self._note_failure(exc.reason, str(exc))
                log.warning(
                    "export of %d records failed (%s); retrying in %.1fs (attempt %d)",
                    nrecords,
                    exc,
                    delay,
                    attempt,
                )
                await asyncio.sleep(delay)
                continue
            except ExportError as exc:
                self._note_failure("refused", str(exc))
                await self._recovered(seq)
                await self._isolate(slices, nrecords, exc, seq)
                return
            except Exception as exc:  # a transport bug must not stall delivery silently: retry, loudly
                self._failing.add(seq)
                attempt += 1
                delay = self._retry.delay(attempt, None)
                self._note_failure("unexpected", f"{type(exc).__name__}: {exc}")
                log.error(
                    "export of %d records raised %s: %s; retrying in %.1fs",
                    nrecords,
                    type(exc).__name__,
                    exc,
                    delay,
                    exc_info=attempt == 1,
                )
                await asyncio.sleep(delay)
                continue
            await self._recovered(seq)
            self._metrics.export_latency.observe(time.monotonic() - started)
            self._metrics.records_exported.inc(nrecords - rejected)
            self.last_export_ok = True
            self.last_error = ""
            if rejected:
                self._metrics.records_rejected.inc(rejected)
                log.error(
                    "collector rejected %d of %d records (partial success); targets: %s",
                    rejected,
                    nrecords,
                    ", ".join(sorted({e.target for e, _, _ in slices})),
                )
            return

    async def _wait_turn(self, seq: int) -> None:
        """While an earlier batch is failing, wait for it: after an outage, batches arrive in order."""
        if self._failing and min(self._failing) < seq:
            async with self._order:
                await self._order.wait_for(lambda: not self._failing or min(self._failing) >= seq)

    async def _recovered(self, seq: int) -> None:
        if seq in self._failing:
            self._failing.discard(seq)
            async with self._order:
                self._order.notify_all()

    async def _isolate(self, slices: list[tuple[_Entry, int, int]], nrecords: int, exc: ExportError, seq: int) -> None:
        """Split a refused batch in halves until the refused records stand alone; report those."""
        if nrecords == 1:
            entry, index, _ = slices[0]
            self._metrics.records_rejected.inc()
            log.error(
                "collector refused a record for good, skipping it: target=%s log.record.uid=%s: %s",
                entry.target,
                entry.uids[index],
                exc,
            )
            return
        flat = [(entry, i, i + 1) for entry, start, stop in slices for i in range(start, stop)]
        half = len(flat) // 2
        for part in (flat[:half], flat[half:]):
            await self._send_until_done(_merge(part), len(part), seq)

    def _note_failure(self, reason: str, message: str) -> None:
        self._metrics.export_failures.labels(reason=reason).inc()
        self.last_export_ok = False
        self.last_error = message

    # -- acknowledgement and commits

    async def _acknowledge(self, slices: list[tuple[_Entry, int, int]]) -> None:
        total = 0
        for entry, start, stop in slices:
            entry.acked += stop - start
            total += stop - start
        self._held -= total
        self._metrics.queue_records.set(self._held)
        await self._commit_ready()
        async with self._space:
            self._space.notify_all()

    async def _commit_ready(self) -> None:
        """Commit the latest cursor per target of the fully acknowledged spans at the queue head."""
        entries = self._entries
        cursors = self._uncommitted
        while entries and entries[0].acked == len(entries[0].framed):
            entry = entries.popleft()
            if entry.cursor is not None:
                cursors[entry.target] = entry.cursor
        if cursors:
            try:
                self._store.commit(cursors)
            except ReceiverError as exc:
                self.last_error = str(exc)
                log.error("checkpoint commit failed, will retry with the next batch: %s", exc)
            else:
                self._uncommitted = {}
                self._metrics.checkpoint_commits.inc()
                self._metrics.checkpoint_last_commit.set(time.time())
        if self._is_settled():
            async with self._settled:
                self._settled.notify_all()


def _merge(parts: list[tuple[_Entry, int, int]]) -> list[tuple[_Entry, int, int]]:
    """Join adjacent single-record slices of one entry back into ranges."""
    merged: list[tuple[_Entry, int, int]] = []
    for entry, start, stop in parts:
        if merged and merged[-1][0] is entry and merged[-1][2] == start:
            merged[-1] = (entry, merged[-1][1], stop)
        else:
            merged.append((entry, start, stop))
    return merged


def build_pipeline(
    cfg: ExporterConfig,
    store: CursorStore,
    resource_for: Callable[[str], Attributes],
    metrics: Metrics,
    environ: Mapping[str, str],
    scope_version: str = "",
    transport: Transport | None = None,
) -> Pipeline:
    """A :class:`Pipeline` wired from the ``exporter`` config (and ``OTEL_EXPORTER_OTLP_*``).

    ``transport`` replaces the OTLP transport (tests, the console of ``demo``).
    """
    return Pipeline(
        transport or make_transport(resolve_exporter(cfg, environ)),
        store,
        resource_for,
        batch=cfg.batch,
        queue_size=cfg.queue_size,
        max_in_flight=cfg.max_in_flight,
        retry_initial=float(cfg.retry_initial_backoff),
        retry_max=float(cfg.retry_max_backoff),
        metrics=metrics,
        scope_version=scope_version,
    )
