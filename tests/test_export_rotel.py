"""End to end against a real collector (rotel): field for field over gRPC and HTTP, and an outage."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from collector_plugin.config import BatchConfig
from collector_plugin.export import ExporterSettings, Pipeline, make_transport
from collector_plugin.records import Attributes, Record, Span
from collector_plugin.telemetry import Metrics
from collector_plugin.testing import MemoryCheckpointStore

try:
    from rotel_harness import RotelCollector
except ImportError:  # pragma: no cover
    from tests.rotel_harness import RotelCollector

pytestmark = pytest.mark.e2e
MakePipeline = Callable[..., Awaitable[Pipeline]]

SHARED = Attributes([("modelarts.job.id", "job-42"), ("modelarts.task.id", "worker-0")])


def resource_for(service: str) -> Attributes:
    return Attributes([("service.name", service), ("cloud.provider", "huawei_cloud"), ("cloud.region", "cn-north-4")])


TRAINING, INFERENCE = resource_for("modelarts-training"), resource_for("modelarts-inference")


def make_records(prefix: str, n: int) -> list[Record]:
    return [
        Record(
            body=f"{prefix} step {i}: loss=0.{i:04d} 中文 ✓" + ("\nTraceback line" if i % 7 == 0 else ""),
            uid=f"{prefix}-{i:06d}",
            observed_ns=1_764_000_000_000_000_000 + i,
            time_ns=1_764_000_000_000_000_000 + i * 1000 if i % 5 else 0,
            severity_number=(9, 13, 17)[i % 3],
            severity_text=("INFO", "WARN", "ERROR")[i % 3],
            event_name="modelarts.event" if i % 4 == 0 else "",
            shared=SHARED,
            attributes={"log.file.line": i, "ratio": i / 4, "ok": i % 2 == 0, "log.iostream": "stdout"},
            resource=TRAINING if i % 10 else INFERENCE,
        )
        for i in range(n)
    ]


def expected(record: Record) -> dict[str, Any]:
    return {
        "body": record.body,
        "attributes": record.all_attributes(),
        "severity_number": record.severity_number,
        "severity_text": record.severity_text,
        "time_unix_nano": record.time_ns,
        "observed_time_unix_nano": record.observed_ns,
        "event_name": record.event_name,
        "resource": record.resource.as_dict(),
    }


def settings_for(collector: RotelCollector, protocol: str, compression: str) -> ExporterSettings:
    endpoint = collector.grpc_endpoint if protocol == "grpc" else collector.http_endpoint
    return ExporterSettings(protocol=protocol, endpoint=endpoint, compression=compression, timeout=5.0)


@pytest.mark.parametrize(
    ("protocol", "compression"),
    [("grpc", "gzip"), ("grpc", "none"), ("http/protobuf", "gzip"), ("http/protobuf", "none")],
)
async def test_records_arrive_field_for_field(
    rotel_collector: RotelCollector, make_pipeline: MakePipeline, protocol: str, compression: str
) -> None:
    store = MemoryCheckpointStore()
    transport = make_transport(settings_for(rotel_collector, protocol, compression))
    pipeline = await make_pipeline(transport, store)
    records = make_records("r", 60)
    await pipeline.put(Span("job-42/worker-0", records[:25], "c1"))
    await pipeline.put(Span("job-42/worker-0", records[25:], "c2"))
    assert await pipeline.flush(15)
    received = await asyncio.to_thread(rotel_collector.records, 60)
    by_uid = {r["attributes"]["log.record.uid"]: r for r in received}
    assert len(received) == len(by_uid) == 60
    for record in records:
        assert by_uid[record.uid] == expected(record)
    assert store.cursors == {"job-42/worker-0": "c2"}


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_collector_down_for_a_while_loses_nothing(
    rotel_collector: RotelCollector, protocol: str, metrics: Metrics
) -> None:
    store = MemoryCheckpointStore()
    transport = make_transport(settings_for(rotel_collector, protocol, "gzip"))
    pipeline = Pipeline(
        transport,
        store,
        batch=BatchConfig(max_records=30, max_delay=0.01),
        queue_size=200,
        max_in_flight=2,
        retry_initial=0.05,
        retry_max=0.3,
        metrics=metrics,
    )
    await pipeline.start()
    try:
        await pipeline.put(Span("t", make_records("before", 20), "1"))
        assert await pipeline.flush(15)
        assert store.cursors == {"t": "1"}

        await asyncio.to_thread(rotel_collector.stop)
        during = make_records("during", 150)
        for i in range(5):
            await pipeline.put(Span("t", during[i * 30 : (i + 1) * 30], str(2 + i)))
        failures = "modelarts_receiver_export_failures_total"
        for _ in range(200):
            if sum(s.value for m in metrics.registry.collect() for s in m.samples if s.name == failures) >= 3:
                break
            await asyncio.sleep(0.05)
        assert pipeline.last_export_ok is False
        assert store.cursors == {"t": "1"}  # nothing acknowledged: nothing committed

        await asyncio.to_thread(rotel_collector.start)
        assert await pipeline.flush(30)
        assert store.cursors == {"t": "6"}
        received = await asyncio.to_thread(rotel_collector.records, 170, 15.0)
        uids = {r["attributes"]["log.record.uid"] for r in received}
        assert {r.uid for r in during} <= uids
        assert len(uids) == 170
    finally:
        await pipeline.close(5)


async def test_build_pipeline_from_config_and_environment(rotel_collector: RotelCollector, metrics: Metrics) -> None:
    from collector_plugin.config import ExporterConfig
    from collector_plugin.export import build_pipeline

    cfg = ExporterConfig.model_validate({"batch": {"max_delay": 0.01}})
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{rotel_collector.http_port}",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=a",
    }
    store = MemoryCheckpointStore()
    pipeline = build_pipeline(cfg, store, metrics, env, scope_version="9")
    await pipeline.start()
    try:
        await pipeline.put(Span("t", make_records("cfg", 3), "c"))
        assert await pipeline.flush(10)
    finally:
        await pipeline.close(5)
    received = await asyncio.to_thread(rotel_collector.records, 3)
    assert sorted(r["attributes"]["log.record.uid"] for r in received) == [f"cfg-{i:06d}" for i in range(3)]
    assert store.cursors == {"t": "c"}
