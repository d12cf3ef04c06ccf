"""OTLP transports: one encoded ``ExportLogsServiceRequest`` per call, over HTTP or gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from typing import Any, Protocol
from urllib.parse import urlsplit

import grpc
import httpx

from collector_plugin.backoff import parse_retry_after
from collector_plugin.errors import ConfigError, ExportError, ReceiverError
from collector_plugin.export.settings import ExporterSettings, safe_url
from collector_plugin.http import released

GRPC_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


class RetryableExportError(ReceiverError):
    """The collector could not take the batch now (down, overloaded, throttling): try again later.

    ``reason`` is a short label for the ``export_failures`` metric; ``retry_after`` is the delay
    the collector asked for, if any.
    """

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{reason}: {detail}" if detail else reason)


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
            response = released(await self._client.post(self.url, content=body, headers=self._headers))
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
