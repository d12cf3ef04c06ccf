"""Exporter settings, transports (HTTP via httpx.MockTransport), and the acking pipeline."""

from __future__ import annotations

import asyncio
import gzip
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import pytest
from gc_helpers import httpx_garbage_after
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_plugin.backoff import parse_retry_after
from collector_plugin.config import BatchConfig, ExporterConfig
from collector_plugin.errors import ConfigError, ExportError
from collector_plugin.export import (
    REQUEST_OVERHEAD,
    Batcher,
    ExporterSettings,
    GrpcTransport,
    HttpTransport,
    Pipeline,
    QueuedSpan,
    RetryableExportError,
    build_pipeline,
    is_local_endpoint,
    make_transport,
    parse_headers,
    resolve_exporter,
)
from collector_plugin.otlp import encode_framed_log_record
from collector_plugin.records import Attributes, Record, Span
from collector_plugin.telemetry import Metrics
from collector_plugin.testing import MemoryCheckpointStore, MemoryTransport, decode_request

MakePipeline = Callable[..., Awaitable[Pipeline]]


def span(target: str, n: int, cursor: str | None, prefix: str = "", **record_kw: Any) -> Span:
    prefix = prefix or f"{target}@{cursor}"
    return Span(
        target,
        [Record(body=f"{prefix} line {i}", uid=f"{prefix}#{i}", observed_ns=1_000 + i, **record_kw) for i in range(n)],
        cursor,
    )


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"modelarts_receiver_{name}", labels or None)
    return float(value or 0.0)


# --- settings ------------------------------------------------------------------------------------


def test_defaults_without_config_or_environment() -> None:
    settings = resolve_exporter(ExporterConfig(), {})
    assert settings.protocol == "grpc"
    assert settings.endpoint == "http://localhost:4317"
    assert settings.compression == "none"  # auto: the default collector is this host's sidecar
    assert settings.timeout == 10.0
    http = resolve_exporter(ExporterConfig(protocol="http/protobuf"), {})
    assert http.endpoint == "http://localhost:4318/v1/logs"


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("http://localhost:4318/v1/logs", True),
        ("localhost:4317", True),
        ("http://127.0.0.1:4318", True),
        ("127.9.9.9:4317", True),
        ("http://[::1]:4318/v1/logs", True),
        ("https://otel.localhost:4318", True),
        ("http://collector:4318", False),
        ("otel-collector.observability.svc:4317", False),
        ("https://10.0.0.7:4318", False),
        ("http://[2001:db8::1]:4318", False),
        ("http://localhost.example.com:4318", False),
    ],
)
def test_compression_auto_sends_plainly_to_this_host_and_gzips_across_a_network(endpoint: str, local: bool) -> None:
    assert is_local_endpoint(endpoint) is local
    settings = resolve_exporter(ExporterConfig(endpoint=endpoint), {})
    assert settings.compression == ("none" if local else "gzip")
    # an explicit choice and the standard variable win over auto
    assert resolve_exporter(ExporterConfig(endpoint=endpoint, compression="gzip"), {}).compression == "gzip"
    env = {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip" if local else "none"}
    assert resolve_exporter(ExporterConfig(endpoint=endpoint), env).compression == env["OTEL_EXPORTER_OTLP_COMPRESSION"]


def test_standard_variables_apply_when_config_is_silent() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4318/base/",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%20e%3Dcret , x-tenant=team-a,broken",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/ca.pem",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/key.pem",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "/cert.pem",
        "OTEL_EXPORTER_OTLP_INSECURE": "TRUE",
    }
    s = resolve_exporter(ExporterConfig(), env)
    assert s.protocol == "http/protobuf"
    assert s.endpoint == "https://collector.example:4318/base/v1/logs"
    assert dict(s.headers) == {"api-key": "s e=cret", "x-tenant": "team-a"}
    assert s.compression == "none"
    assert s.timeout == 2.5
    assert (s.ca_file, s.key_file, s.cert_file, s.insecure) == ("/ca.pem", "/key.pem", "/cert.pem", True)


def test_logs_variables_win_over_generic_and_logs_endpoint_is_used_as_is() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://logs:9999/custom/path",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=1",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "b=2",
    }
    s = resolve_exporter(ExporterConfig(), env)
    assert s.protocol == "http/protobuf"
    assert s.endpoint == "http://logs:9999/custom/path"
    assert dict(s.headers) == {"b": "2"}


def test_explicit_config_keys_win_over_the_environment_nested_too() -> None:
    cfg = ExporterConfig.model_validate(
        {
            "protocol": "grpc",
            "endpoint": "collector:4317",
            "headers": {"Authorization": "Bearer t"},
            "compression": "gzip",
            "timeout": 3,
            "tls": {"insecure": True, "ca_file": "/mine.pem"},
        }
    )
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=1",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        "OTEL_EXPORTER_OTLP_INSECURE": "false",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/env.pem",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/env-key.pem",
    }
    s = resolve_exporter(cfg, env)
    assert (s.protocol, s.endpoint, s.compression, s.timeout) == ("grpc", "collector:4317", "gzip", 3.0)
    assert dict(s.headers) == {"Authorization": "Bearer t"}
    assert (s.insecure, s.ca_file) == (True, "/mine.pem")
    assert s.key_file == "/env-key.pem"  # not set in the config: the variable applies


def test_http_config_endpoint_gets_the_logs_path_once() -> None:
    for endpoint in ("http://c:4318", "http://c:4318/", "http://c:4318/v1/logs"):
        cfg = ExporterConfig(protocol="http/protobuf", endpoint=endpoint)
        assert resolve_exporter(cfg, {}).endpoint == "http://c:4318/v1/logs"


def test_bad_variables_are_config_errors_naming_the_variable() -> None:
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}
    with pytest.raises(ConfigError) as info:
        resolve_exporter(ExporterConfig(), env)
    assert any("OTEL_EXPORTER_OTLP_PROTOCOL" in p for p in info.value.problems)
    assert any("OTEL_EXPORTER_OTLP_TIMEOUT" in p for p in info.value.problems)


def test_headers_never_show_in_repr() -> None:
    s = ExporterSettings(protocol="grpc", endpoint="x", headers={"authorization": "Bearer SECRET"})
    assert "SECRET" not in repr(s)


def test_parse_headers_and_retry_after() -> None:
    assert parse_headers("") == {}
    assert parse_headers("k=v=w") == {"k": "v=w"}
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    later = parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT")
    assert later is not None and later > 1e6


def test_make_transport_picks_by_protocol() -> None:
    assert isinstance(make_transport(ExporterSettings("http/protobuf", "http://h/v1/logs")), HttpTransport)
    grpc_transport = make_transport(ExporterSettings("grpc", "http://127.0.0.1:1"))
    assert isinstance(grpc_transport, GrpcTransport)
    asyncio.run(grpc_transport.close())


# --- HTTP transport ------------------------------------------------------------------------------


def http_transport(handler: Callable[[httpx.Request], httpx.Response], **settings: Any) -> HttpTransport:
    s = ExporterSettings("http/protobuf", "http://collector/v1/logs", **settings)
    return HttpTransport(s, client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def partial_success_body(rejected: int) -> bytes:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

    response = ExportLogsServiceResponse()
    response.partial_success.rejected_log_records = rejected
    response.partial_success.error_message = "too old"
    return response.SerializeToString()


async def test_http_sends_gzip_protobuf_with_headers_and_reads_partial_success() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=partial_success_body(2))

    transport = http_transport(handler, headers={"x-api-key": "k"}, compression="gzip")
    payload = b"\x0a\x00"
    assert await transport.send(payload, 1) == 2
    request = seen[0]
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["x-api-key"] == "k"
    assert gzip.decompress(request.content) == payload
    await transport.close()


async def test_http_without_compression_sends_the_payload_as_is() -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        assert "content-encoding" not in request.headers
        return httpx.Response(200)

    transport = http_transport(handler, compression="none")
    assert await transport.send(b"abc", 1) == 0
    assert seen == [b"abc"]


@pytest.mark.parametrize("status", [429, 502, 503, 504, 500, 401])
async def test_http_retryable_statuses(status: int) -> None:
    transport = http_transport(lambda r: httpx.Response(status, headers={"Retry-After": "3"}))
    with pytest.raises(RetryableExportError) as info:
        await transport.send(b"", 0)
    assert info.value.retry_after == 3.0
    assert info.value.reason == f"http_{status}"


@pytest.mark.parametrize("status", [400, 413])
async def test_http_permanent_statuses(status: int) -> None:
    transport = http_transport(lambda r: httpx.Response(status, text="bad record"))
    with pytest.raises(ExportError, match=str(status)):
        await transport.send(b"", 0)


async def test_http_connection_error_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(RetryableExportError) as info:
        await http_transport(handler).send(b"", 0)
    assert info.value.reason == "connection"


async def test_grpc_unreachable_collector_is_retryable() -> None:
    from rotel_harness import free_port

    transport = GrpcTransport(ExporterSettings("grpc", f"http://127.0.0.1:{free_port()}", timeout=2.0))
    try:
        with pytest.raises(RetryableExportError) as info:
            await transport.send(b"", 0)
        assert info.value.reason in ("grpc_unavailable", "grpc_deadline_exceeded")
    finally:
        await transport.close()


# --- pipeline ------------------------------------------------------------------------------------


class ShuffledTransport(MemoryTransport):
    """Acknowledges after a random delay, so concurrent batches complete out of order."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._random = random.Random(seed)

    async def send(self, payload: bytes, nrecords: int) -> int:
        await asyncio.sleep(self._random.uniform(0, 0.01))
        return await super().send(payload, nrecords)


class CheckingStore(MemoryCheckpointStore):
    """Asserts, at every commit, that each committed span and all spans before it were acknowledged."""

    def __init__(self, transport: MemoryTransport) -> None:
        super().__init__()
        self.transport = transport
        self.spans: list[Span] = []
        self.violations: list[str] = []

    def commit(self, cursors: Mapping[str, str]) -> None:
        acked = set(self.transport.uids())
        for target, cursor in cursors.items():
            index = max(i for i, s in enumerate(self.spans) if s.target == target and s.cursor == cursor)
            for earlier in self.spans[: index + 1]:
                missing = [r.uid for r in earlier.records if r.uid not in acked]
                if missing:
                    self.violations.append(f"{target}={cursor} committed before {missing[:3]}")
        super().commit(cursors)


@pytest.mark.parametrize("seed", range(6))
async def test_cursors_commit_in_order_only_after_acks(make_pipeline: MakePipeline, seed: int) -> None:
    rnd = random.Random(seed)
    transport = ShuffledTransport(seed)
    store = CheckingStore(transport)
    pipeline = await make_pipeline(transport, store, batch=BatchConfig(max_records=7, max_delay=0.001))
    per_target: dict[str, int] = {}
    for i in range(60):
        target = rnd.choice(["a", "b", "c"])
        per_target[target] = per_target.get(target, 0) + 1
        s = span(target, rnd.choice([0, 0, 1, 3, 9, 20]), str(per_target[target]), prefix=f"s{i}")
        store.spans.append(s)
        await pipeline.put(s)
    assert await pipeline.flush(10)
    assert store.violations == []
    assert len(transport.uids()) == len(set(transport.uids())) == sum(len(s.records) for s in store.spans)
    assert store.cursors == {t: str(n) for t, n in per_target.items()}
    for target in per_target:  # per target, committed cursors only move forward
        seen = [int(c[target]) for c in store.commits if target in c]
        assert seen == sorted(seen)


async def test_span_split_over_batches_commits_once_all_parts_are_acked(make_pipeline: MakePipeline) -> None:
    transport = MemoryTransport()
    store = CheckingStore(transport)
    pipeline = await make_pipeline(transport, store, batch=BatchConfig(max_records=50, max_delay=0.001))
    s = span("t", 120, "c1")
    store.spans.append(s)
    await pipeline.put(s)
    assert await pipeline.flush(5)
    assert [len(b) for b in transport.batches] == [50, 50, 20]
    assert store.commits == [{"t": "c1"}]
    assert store.violations == []


async def test_empty_spans_commit_in_queue_order(make_pipeline: MakePipeline) -> None:
    transport = MemoryTransport()
    store = MemoryCheckpointStore()
    pipeline = await make_pipeline(transport, store)
    transport.block()
    await pipeline.put(span("logs", 5, "l1"))
    await pipeline.put(span("events", 0, "e1"))
    await asyncio.sleep(0.05)
    assert store.commits == []  # the empty span waits behind the unacknowledged one
    transport.release()
    assert await pipeline.flush(5)
    assert store.cursors == {"logs": "l1", "events": "e1"}
    await pipeline.put(span("events", 0, "e2"))  # nothing ahead of it: commits at once
    assert store.cursors["events"] == "e2"


async def test_span_without_cursor_moves_nothing(make_pipeline: MakePipeline) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    pipeline = await make_pipeline(transport, store)
    await pipeline.put(span("t", 3, None, prefix="x"))
    assert await pipeline.flush(5)
    assert len(transport.records) == 3
    assert store.commits == []


async def test_put_blocks_while_the_queue_is_full(make_pipeline: MakePipeline, metrics: Metrics) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    pipeline = await make_pipeline(transport, store, queue_size=10)
    transport.block()
    await pipeline.put(span("t", 4, "1"))
    await pipeline.put(span("t", 4, "2"))
    third = asyncio.create_task(pipeline.put(span("t", 4, "3")))
    await asyncio.sleep(0.05)
    assert not third.done()
    assert pipeline.queued_records == 8
    assert counter(metrics, "queue_records") == 8
    transport.release()
    await asyncio.wait_for(third, 5)
    assert await pipeline.flush(5)
    assert len(transport.records) == 12


async def test_memory_stays_flat_while_the_collector_is_down(make_pipeline: MakePipeline) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    pipeline = await make_pipeline(transport, store, queue_size=100)
    transport.fail_next(10**9)
    peak = 0

    async def produce() -> None:
        for i in range(500):
            await pipeline.put(span("t", 10, str(i)))

    producer = asyncio.create_task(produce())
    for _ in range(40):
        await asyncio.sleep(0.005)
        peak = max(peak, pipeline.queued_records)
    assert not producer.done()  # polling stopped: the producer waits on the full queue
    assert peak <= 100
    assert store.commits == []
    transport.recover()
    await asyncio.wait_for(producer, 20)
    assert await pipeline.flush(10)
    assert len(set(transport.uids())) == 5000
    assert store.cursors == {"t": "499"}


async def test_retries_forever_then_delivers_everything(make_pipeline: MakePipeline, metrics: Metrics) -> None:
    transport = MemoryTransport()
    store = CheckingStore(transport)
    pipeline = await make_pipeline(transport, store)
    transport.fail_next(25)
    for i in range(5):
        s = span("t", 10, str(i))
        store.spans.append(s)
        await pipeline.put(s)
    assert await pipeline.flush(10)
    assert len(transport.records) == 50
    assert counter(metrics, "export_failures_total", reason="connection") == 25
    assert counter(metrics, "records_exported_total") == 50
    assert store.violations == []
    assert pipeline.last_export_ok is True


async def test_failure_state_is_visible_for_readiness(make_pipeline: MakePipeline) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    pipeline = await make_pipeline(transport, store)
    assert pipeline.last_export_ok is None
    transport.fail_next(10**9)
    await pipeline.put(span("t", 1, "1"))
    for _ in range(100):
        if pipeline.last_export_ok is False:
            break
        await asyncio.sleep(0.01)
    assert pipeline.last_export_ok is False
    assert "connection" in pipeline.last_error
    transport.recover()
    assert await pipeline.flush(5)
    assert pipeline.last_export_ok is True


async def test_refused_records_are_isolated_reported_and_skipped(
    make_pipeline: MakePipeline, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    transport = MemoryTransport()
    store = MemoryCheckpointStore()
    pipeline = await make_pipeline(transport, store, batch=BatchConfig(max_records=40, max_delay=0.001))
    bad = {"t@2#5", "t@3#17"}
    transport.refuse_when(lambda r: r["attributes"]["log.record.uid"] in bad)
    caplog.set_level(logging.ERROR, "collector_plugin.export")
    for i in range(5):
        await pipeline.put(span("t", 20, str(i)))
    assert await pipeline.flush(10)
    delivered = transport.uids()
    assert len(delivered) == len(set(delivered)) == 98
    assert not bad & set(delivered)
    assert counter(metrics, "records_rejected_total") == 2
    assert store.cursors == {"t": "4"}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    for uid in bad:
        assert any(uid in e and "target=t" in e for e in errors)


async def test_partial_success_is_counted_and_logged(
    make_pipeline: MakePipeline, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    pipeline = await make_pipeline(transport, store)
    transport.reject_next(3)
    caplog.set_level(logging.ERROR, "collector_plugin.export")
    await pipeline.put(span("t", 10, "1"))
    assert await pipeline.flush(5)
    assert counter(metrics, "records_rejected_total") == 3
    assert counter(metrics, "records_exported_total") == 7
    assert any("rejected 3 of 10" in r.getMessage() for r in caplog.records)
    assert store.cursors == {"t": "1"}


async def test_batches_respect_max_bytes(make_pipeline: MakePipeline) -> None:
    sizes: list[int] = []

    class Sized(MemoryTransport):
        async def send(self, payload: bytes, nrecords: int) -> int:
            sizes.append(len(payload))
            return await super().send(payload, nrecords)

    transport, store = Sized(), MemoryCheckpointStore()
    pipeline = await make_pipeline(
        transport, store, batch=BatchConfig(max_records=1000, max_bytes=8 * 1024, max_delay=0.001)
    )
    records = [
        Record(body="x" * 1000, uid=f"u{i}", observed_ns=1, resource=RES_A if i % 3 else RES_B) for i in range(60)
    ]
    await pipeline.put(Span("t", records, "c"))
    assert await pipeline.flush(5)
    assert max(sizes) <= 8 * 1024
    assert len(transport.records) == 60
    assert {r["resource"]["service.name"] for r in transport.records} == {"a", "b"}


async def test_max_delay_sends_a_small_batch(make_pipeline: MakePipeline) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    await_pipeline = await make_pipeline(transport, store, batch=BatchConfig(max_records=1000, max_delay=0.01))
    await await_pipeline.put(span("t", 3, "1"))
    for _ in range(200):
        if store.commits:
            break
        await asyncio.sleep(0.01)
    assert store.cursors == {"t": "1"}  # no flush was asked: the delay bound sent it


async def test_close_delivers_within_grace_and_reports_success(metrics: Metrics) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    pipeline = Pipeline(
        transport,
        store,
        batch=BatchConfig(max_records=1000, max_delay=3600),
        queue_size=100,
        max_in_flight=1,
        retry_initial=0.01,
        retry_max=0.01,
        metrics=metrics,
    )
    await pipeline.start()
    await pipeline.put(span("t", 5, "1"))
    assert await pipeline.close(5) is True
    assert len(transport.records) == 5
    assert store.cursors == {"t": "1"}
    assert transport.closed
    with pytest.raises(RuntimeError):
        await pipeline.put(span("t", 1, "2"))


async def test_close_with_collector_down_gives_up_without_committing(metrics: Metrics) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    pipeline = Pipeline(
        transport,
        store,
        batch=BatchConfig(max_delay=0.001),
        queue_size=100,
        max_in_flight=2,
        retry_initial=0.01,
        retry_max=0.01,
        metrics=metrics,
    )
    await pipeline.start()
    transport.fail_next(10**9)
    await pipeline.put(span("t", 5, "1"))
    assert await pipeline.close(0.2) is False
    assert store.commits == []
    assert counter(metrics, "checkpoint_commits_total") == 0


async def test_commit_failure_is_retried_with_the_next_batch(make_pipeline: MakePipeline) -> None:
    from collector_plugin.errors import CheckpointError

    class Flaky(MemoryCheckpointStore):
        failures = 1

        def commit(self, cursors: Mapping[str, str]) -> None:
            if self.failures:
                self.failures -= 1
                raise CheckpointError("disk full")
            super().commit(cursors)

    transport, store = MemoryTransport(), Flaky()
    pipeline = await make_pipeline(transport, store)
    await pipeline.put(span("a", 2, "1"))
    await asyncio.sleep(0.1)
    assert store.commits == []
    await pipeline.put(span("b", 2, "1"))
    assert await pipeline.flush(5)
    assert store.cursors == {"a": "1", "b": "1"}


async def test_records_carry_resource_scope_and_uid(make_pipeline: MakePipeline) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    pipeline = await make_pipeline(
        transport,
        store,
    )
    shared = Attributes([("modelarts.job.id", "j1")])
    await pipeline.put(
        Span(
            "t",
            [
                Record(
                    body="hello",
                    uid="u1",
                    observed_ns=7,
                    time_ns=5,
                    severity_number=17,
                    severity_text="ERROR",
                    event_name="e",
                    shared=shared,
                    attributes={"n": 1},
                    resource=Attributes([("service.name", "modelarts-inference"), ("cloud.region", "cn-north-4")]),
                )
            ],
            "c",
        )
    )
    assert await pipeline.flush(5)
    assert decode_request  # the transport decodes with opentelemetry-proto
    [rec] = transport.records
    assert rec == {
        "body": "hello",
        "attributes": {"modelarts.job.id": "j1", "n": 1, "log.record.uid": "u1"},
        "severity_number": 17,
        "severity_text": "ERROR",
        "time_unix_nano": 5,
        "observed_time_unix_nano": 7,
        "event_name": "e",
        "resource": {"service.name": "modelarts-inference", "cloud.region": "cn-north-4"},
        "scope_name": "collector_plugin",
        "scope_version": "test",
    }


async def test_http_errors_never_show_credentials_from_the_url() -> None:
    s = ExporterSettings("http/protobuf", "https://user:pa55@collector:4318/v1/logs?token=SECRET")
    transport = HttpTransport(s, client=httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(503))))
    with pytest.raises(RetryableExportError) as info:
        await transport.send(b"", 0)
    assert "pa55" not in str(info.value) and "SECRET" not in str(info.value)
    assert "collector:4318/v1/logs" in str(info.value)


async def test_an_unexpected_transport_exception_is_retried_not_lost(
    make_pipeline: MakePipeline, metrics: Metrics
) -> None:
    class Buggy(MemoryTransport):
        raised = False

        async def send(self, payload: bytes, nrecords: int) -> int:
            if not self.raised:
                self.raised = True
                raise ValueError("bug")
            return await super().send(payload, nrecords)

    transport, store = Buggy(), MemoryCheckpointStore()
    pipeline = await make_pipeline(transport, store)
    await pipeline.put(span("t", 3, "1"))
    assert await pipeline.flush(5)
    assert len(transport.records) == 3
    assert counter(metrics, "export_failures_total", reason="unexpected") == 1


def test_grpc_transport_made_outside_the_loop_works_in_each_loop(tmp_path: Any) -> None:
    from rotel_harness import RotelCollector

    collector = RotelCollector(tmp_path / "rotel", verbosity="basic")
    collector.start()
    try:
        transport = GrpcTransport(ExporterSettings("grpc", collector.grpc_endpoint, compression="gzip"))
        assert asyncio.run(transport.send(b"", 0)) == 0
        assert asyncio.run(transport.send(b"", 0)) == 0  # a second loop: the channel is remade
        asyncio.run(transport.close())
    finally:
        collector.stop()


async def test_after_an_outage_batches_arrive_in_queue_order(make_pipeline: MakePipeline) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    pipeline = await make_pipeline(
        transport, store, batch=BatchConfig(max_records=10, max_delay=0.001), max_in_flight=4
    )
    transport.fail_next(10**9)
    spans = [span("t", 10, str(i)) for i in range(12)]
    for s in spans:
        await pipeline.put(s)
    await asyncio.sleep(0.1)  # every slot has failed at least once by now
    transport.recover()
    assert await pipeline.flush(10)
    assert transport.uids() == [r.uid for s in spans for r in s.records]


# --- memory bounded by bytes ---------------------------------------------------------------------


def padded(target: str, n: int, cursor: str, pad: int) -> Span:
    """A span of ``n`` records whose bodies carry ``pad`` extra bytes each."""
    prefix = f"{target}@{cursor}"
    records = [Record(body=f"{prefix} line {i} " + "p" * pad, uid=f"{prefix}#{i}", observed_ns=i) for i in range(n)]
    return Span(target, records, cursor)


RES_A, RES_B = Attributes([("service.name", "a")]), Attributes([("service.name", "b")])


def encoded_size(s: Span) -> int:
    return sum(len(encode_framed_log_record(r)) for r in s.records)


async def yield_to_loop(turns: int = 20) -> None:
    """Let every ready task run a few steps (no wall-clock time involved)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def test_put_waits_while_max_bytes_are_held_then_resumes(metrics: Metrics) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    spans = [padded("t", 4, str(i), 300) for i in range(3)]
    size = encoded_size(spans[0])
    cfg = ExporterConfig(queue_size=1000, queue_max_bytes=max(1024, size * 5 // 2), batch=BatchConfig(max_delay=0.001))
    pipeline = build_pipeline(cfg, store, metrics, {}, transport=transport)
    await pipeline.start()
    try:
        transport.block()
        await pipeline.put(spans[0])
        await pipeline.put(spans[1])
        third = asyncio.create_task(pipeline.put(spans[2]))
        await yield_to_loop()
        assert not third.done()  # records held: 8 of 1000; bytes held: 2 spans of a 2.5-span bound
        assert pipeline.queued_bytes == 2 * size
        transport.release()
        await asyncio.wait_for(third, 5)
        assert await pipeline.flush(5)
        assert len(transport.records) == 12
        assert store.cursors == {"t": "2"}
        assert pipeline.queued_bytes == 0
    finally:
        await pipeline.close(2)


async def test_a_span_larger_than_max_bytes_still_passes_alone(make_pipeline: MakePipeline) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    pipeline = await make_pipeline(transport, store, queue_max_bytes=1024)
    big, small = padded("t", 20, "big", 200), span("t", 1, "small")
    assert encoded_size(big) > 4 * 1024
    transport.block()
    await asyncio.wait_for(pipeline.put(big), 5)  # an empty queue takes any span: no deadlock
    assert pipeline.queued_bytes == encoded_size(big)
    after = asyncio.create_task(pipeline.put(small))
    await yield_to_loop()
    assert not after.done()  # nothing joins the oversized span until it is acknowledged
    transport.release()
    await asyncio.wait_for(after, 5)
    assert await pipeline.flush(5)
    assert store.cursors == {"t": "small"}
    assert len(transport.records) == 21


async def test_a_waiting_large_span_is_not_overtaken_by_smaller_ones(make_pipeline: MakePipeline) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    pipeline = await make_pipeline(transport, store, queue_max_bytes=2048)
    first, big, later = span("a", 1, "1"), padded("b", 20, "big", 200), span("c", 1, "1")
    transport.block()
    await pipeline.put(first)
    waiting_big = asyncio.create_task(pipeline.put(big))  # needs the queue empty
    await yield_to_loop()
    waiting_later = asyncio.create_task(pipeline.put(later))  # would fit now, but comes second
    await yield_to_loop()
    assert not waiting_big.done()
    assert not waiting_later.done()
    assert pipeline.queued_records == 1
    transport.release()
    await asyncio.wait_for(asyncio.gather(waiting_big, waiting_later), 5)
    assert await pipeline.flush(5)
    uids = transport.uids()
    assert uids.index(first.records[0].uid) < uids.index(big.records[0].uid) < uids.index(later.records[0].uid)


async def test_a_cancelled_waiting_put_does_not_block_the_next(make_pipeline: MakePipeline) -> None:
    transport, store = MemoryTransport(), MemoryCheckpointStore()
    pipeline = await make_pipeline(transport, store, queue_size=2)
    transport.block()
    await pipeline.put(span("a", 2, "1"))
    cancelled = asyncio.create_task(pipeline.put(span("b", 1, "1")))
    await yield_to_loop()
    nxt = asyncio.create_task(pipeline.put(span("c", 1, "1")))
    await yield_to_loop()
    cancelled.cancel()
    transport.release()
    await asyncio.wait_for(nxt, 5)
    assert cancelled.cancelled()
    assert await pipeline.flush(5)
    assert store.cursors == {"a": "1", "c": "1"}


class SlowAckTransport(MemoryTransport):
    """Acknowledges after a few loop turns, so puts, batches and acks interleave."""

    def __init__(self, turns: list[int]) -> None:
        super().__init__()
        self._turns = turns
        self._calls = 0

    async def send(self, payload: bytes, nrecords: int) -> int:
        self._calls += 1
        await yield_to_loop(self._turns[self._calls % len(self._turns)])
        return await super().send(payload, nrecords)


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 400)), min_size=1, max_size=25),
    bound=st.integers(1024, 8 * 1024),
    in_flight=st.integers(1, 3),
    turns=st.lists(st.integers(0, 5), min_size=1, max_size=5),
)
def test_bytes_held_never_exceed_the_bound_but_for_one_span(
    sizes: list[tuple[int, int]], bound: int, in_flight: int, turns: list[int]
) -> None:
    spans = [padded("t", n, str(i), pad) for i, (n, pad) in enumerate(sizes)]
    largest = max(encoded_size(s) for s in spans)
    transport, store = SlowAckTransport(turns), MemoryCheckpointStore()
    observed: list[int] = []

    async def run() -> None:
        pipeline = Pipeline(
            transport,
            store,
            batch=BatchConfig(max_records=7, max_bytes=2048, max_delay=0.001),
            queue_size=10_000,
            queue_max_bytes=bound,
            max_in_flight=in_flight,
            retry_initial=0.001,
            retry_max=0.001,
            metrics=Metrics(),
        )
        transport.on_accept = lambda _: observed.append(pipeline.queued_bytes)
        await pipeline.start()
        for s in spans:
            await asyncio.wait_for(pipeline.put(s), 10)
            observed.append(pipeline.queued_bytes)
        assert await pipeline.close(10)

    asyncio.run(run())
    assert observed and max(observed) <= max(bound, largest)
    assert len(transport.records) == sum(n for n, _ in sizes)
    assert store.cursors == {"t": str(len(spans) - 1)}


# --- batcher -------------------------------------------------------------------------------------


@given(
    sizes=st.lists(st.lists(st.integers(1, 900), max_size=12), min_size=1, max_size=10),
    max_records=st.integers(1, 9),
    max_bytes=st.integers(1024, 4096),
)
def test_batches_cover_the_queue_in_order_within_count_and_bytes(
    sizes: list[list[int]], max_records: int, max_bytes: int
) -> None:
    header = 40
    batcher = Batcher(BatchConfig(max_records=max_records, max_bytes=max_bytes), lambda service: header)
    queued = [QueuedSpan(span(f"t{i}", len(lens), str(i)), [b"r" * n for n in lens], i) for i, lens in enumerate(sizes)]
    for q in queued:
        batcher.add(q, 0.0)
    taken: list[tuple[int, int]] = []
    batches: list[tuple[int, int]] = []  # (records, payload bytes)
    while (batch := batcher.take(0.0)) is not None:
        records = [(s.ident, i) for s, start, stop in batch.slices for i in range(start, stop)]
        payload = sum(len(s.framed[i]) for s, start, stop in batch.slices for i in range(start, stop))
        assert batch.nrecords == len(records) <= max_records
        assert batch.nbytes == payload
        assert len(records) == 1 or payload + header + REQUEST_OVERHEAD <= max_bytes
        taken.extend(records)
        batches.append((len(records), payload))
    assert taken == [(q.ident, i) for q in queued for i in range(len(q.framed))]
    assert not batcher
    # each batch is as full as the limits allow: the record after it would not have fitted
    sizes_in_order = [n for lens in sizes for n in lens]
    first = 0
    for count, payload in batches[:-1]:
        first += count
        assert count == max_records or payload + sizes_in_order[first] + header + REQUEST_OVERHEAD > max_bytes


async def test_an_export_leaves_no_reference_cycle_holding_its_payload() -> None:
    # httpx's read response and its stream point at each other: left alone, every sent payload
    # (MBs while catching up) waits for the cyclic GC instead of going when the send returns
    transport = http_transport(lambda request: httpx.Response(200), compression="none")
    await transport.send(b"warm up", 1)
    assert await httpx_garbage_after(lambda: transport.send(b"x" * 100_000, 1)) == []
