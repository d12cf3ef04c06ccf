"""Export throughput: our Pipeline (HTTP plain, HTTP gzip, gRPC) vs the SDK BatchLogRecordProcessor.

Run: ``python tests/benchmarks/bench_export.py [--records N] [--rounds N] [--paths ...]``.

Each path sends N typical records (120-byte bodies, six attributes, one resource of eight) to a
real rotel collector (``--exporter blackhole``) on loopback. The timed part is building each
record and handing it to the path, until everything is acknowledged (ours: ``flush``; SDK:
``shutdown``). Printed per path, median of the rounds: records/s, CPU-seconds of this process,
records per CPU-second, and records dropped (ours: sent minus acknowledged; the SDK: sent minus
what the collector counted). Not part of the pytest run; speed is never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import resource as resource_module
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for rotel_harness

from rotel_harness import RotelCollector

from collector_plugin.config import BatchConfig, ExporterConfig
from collector_plugin.export import ExporterSettings, Pipeline, make_transport
from collector_plugin.lines import Line
from collector_plugin.mapping import LineMapper
from collector_plugin.records import Attributes, Record, Span
from collector_plugin.telemetry import Metrics
from collector_plugin.testing import MemoryCheckpointStore

RESOURCE = {
    "service.name": "modelarts-training",
    "service.namespace": "modelarts",
    "cloud.provider": "huawei_cloud",
    "cloud.platform": "huawei_cloud_modelarts",
    "cloud.region": "cn-north-4",
    "cloud.account.id": "0123456789abcdef0123456789abcdef",
    "host.name": "receiver-0",
    "service.instance.id": "1a2b3c4d-0000-1111-2222-333344445555",
}
SHARED = {
    "modelarts.job.id": "7f3c2a10-9d8e-4b5a-8c21-0a1b2c3d4e5f",
    "modelarts.task.id": "worker-0",
    "modelarts.source": "training_task_logs",
}
SPAN_SIZE = 1000


@dataclass
class Result:
    seconds: float
    cpu: float
    dropped: int


def bodies(n: int) -> list[str]:
    base = "INFO 2026-12-01 02:00:00,123 train.py:211] epoch 3 step {:07d} loss=0.4182 lr=1.0e-04 grad_norm=0.93 tokens/s=18342 "
    return [(base.format(i) + "x" * 120)[:120] for i in range(n)]


async def run_ours(n: int, settings: ExporterSettings, lines: list[str], *, line_path: bool = False) -> Result:
    """Our pipeline, records built one by one (``Record``), or as the task log readers make them
    (``line_path``: ``LineMapper.lines`` over ``Line`` tuples, encoded in one pass)."""
    metrics = Metrics()
    cfg = ExporterConfig()
    resource = Attributes(RESOURCE.items())
    shared = Attributes(SHARED.items())
    pipeline = Pipeline(
        make_transport(settings),
        MemoryCheckpointStore(),
        batch=BatchConfig(),
        queue_size=cfg.queue_size,
        queue_max_bytes=cfg.queue_max_bytes,
        max_in_flight=cfg.max_in_flight,
        retry_initial=0.1,
        retry_max=1.0,
        metrics=metrics,
        scope_version="bench",
    )
    await pipeline.start()
    now = time.time_ns()
    wall, cpu = time.perf_counter(), time.process_time()
    offset = 0
    mapper = LineMapper(
        scope="bench", source="training_task_logs", target="bench/worker-0", shared=shared, resource=resource
    )
    for start in range(0, n, SPAN_SIZE):
        if line_path:
            span_lines = [Line(lines[i], i * 121) for i in range(start, min(n, start + SPAN_SIZE))]
            await pipeline.put(Span("bench/worker-0", mapper.lines(span_lines, [(0, now)]), str(start)))
            continue
        records = [
            Record(
                body=lines[i],
                uid=f"bench/{i:012d}",
                observed_ns=now + i,
                time_ns=now,
                severity_number=9,
                severity_text="INFO",
                shared=shared,
                attributes={"log.file.line": i, "log.iostream": "stdout", "log.file.offset": offset},
                resource=resource,
            )
            for i in range(start, min(n, start + SPAN_SIZE))
        ]
        offset += len(records) * 121
        await pipeline.put(Span("bench/worker-0", records, str(offset)))
    flushed = await pipeline.flush(600)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    exported = metrics.registry.get_sample_value("modelarts_receiver_records_exported_total") or 0
    await pipeline.close(10)
    if not flushed:
        print("  warning: flush timed out", file=sys.stderr)
    return Result(wall, cpu, n - int(exported))


async def catch_up(mib: int, settings: ExporterSettings, queue_max_bytes: int) -> tuple[float, float]:
    """Send ``mib`` MiB of 2 KiB log lines as fast as the pipeline takes them (a receiver catching
    up on a long log); return (seconds, peak RSS in MB of this process)."""
    cfg = ExporterConfig()
    resource = Attributes(RESOURCE.items())
    pipeline = Pipeline(
        make_transport(settings),
        MemoryCheckpointStore(),
        batch=BatchConfig(),
        queue_size=cfg.queue_size,
        queue_max_bytes=queue_max_bytes,
        max_in_flight=cfg.max_in_flight,
        retry_initial=0.1,
        retry_max=1.0,
        metrics=Metrics(),
    )
    await pipeline.start()
    line = "x" * 2000
    sent = offset = 0
    wall = time.perf_counter()
    while sent < mib * 1024 * 1024:
        records = [
            Record(body=f"{offset + i:012d} {line}", uid=f"c/{offset + i}", observed_ns=i, resource=resource)
            for i in range(200)
        ]
        offset += len(records)
        sent += sum(len(r.body) for r in records)
        await pipeline.put(Span("catch-up/worker-0", records, str(offset)))
    if not await pipeline.flush(600):
        print("  warning: flush timed out", file=sys.stderr)
    wall = time.perf_counter() - wall
    await pipeline.close(10)
    return wall, resource_module.getrusage(resource_module.RUSAGE_SELF).ru_maxrss / 1024


def run_sdk(n: int, endpoint: str, lines: list[str], received: Callable[[], int]) -> Result:
    # The SDK's logs API lives in private modules; this script is the only place we import them.
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    logging.getLogger("opentelemetry").setLevel(logging.ERROR)  # one "Queue full" line per drop burst
    before = received()
    provider = LoggerProvider(resource=Resource.create(RESOURCE))
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint)))
    logger = provider.get_logger("bench", "1")
    now = time.time_ns()
    wall, cpu = time.perf_counter(), time.process_time()
    offset = 0
    for i in range(n):
        offset += 121
        logger.emit(
            timestamp=now,
            observed_timestamp=now + i,
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            body=lines[i],
            attributes={
                **SHARED,
                "log.file.line": i,
                "log.iostream": "stdout",
                "log.file.offset": offset,
                "log.record.uid": f"bench/{i:012d}",
            },
        )
    provider.shutdown()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    got = received() - before
    return Result(wall, cpu, n - got)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--paths",
        nargs="*",
        default=["http", "http-lines", "http-gzip", "grpc", "grpc-plain", "sdk"],
        help="any of: http http-lines http-gzip grpc grpc-plain sdk",
    )
    parser.add_argument(
        "--catch-up-mib",
        type=int,
        default=0,
        help="instead: send this many MiB of 2 KiB lines over HTTP and print the peak RSS",
    )
    parser.add_argument("--queue-max-bytes", type=int, default=ExporterConfig().queue_max_bytes)
    args = parser.parse_args()
    if args.catch_up_mib:
        with tempfile.TemporaryDirectory() as tmp:
            collector = RotelCollector(Path(tmp) / "rotel", verbosity="basic")
            collector.start()
            try:
                settings = ExporterSettings("http/protobuf", collector.http_endpoint, compression="none")
                seconds, rss = asyncio.run(catch_up(args.catch_up_mib, settings, args.queue_max_bytes))
            finally:
                collector.stop()
        print(
            f"catch-up of {args.catch_up_mib} MiB (queue_max_bytes={args.queue_max_bytes}): {seconds:.1f} s, peak RSS {rss:.0f} MB"
        )
        return
    n = args.records
    lines = bodies(n)

    with tempfile.TemporaryDirectory() as tmp:
        collector = RotelCollector(Path(tmp) / "rotel", verbosity="basic")
        collector.start()
        try:
            received = lambda: collector.received_count(settle=0.5, timeout=60)  # noqa: E731
            plans: dict[str, Callable[[], Result]] = {
                "http": lambda: asyncio.run(
                    run_ours(n, ExporterSettings("http/protobuf", collector.http_endpoint, compression="none"), lines)
                ),
                "http-lines": lambda: asyncio.run(
                    run_ours(
                        n,
                        ExporterSettings("http/protobuf", collector.http_endpoint, compression="none"),
                        lines,
                        line_path=True,
                    )
                ),
                "http-gzip": lambda: asyncio.run(
                    run_ours(n, ExporterSettings("http/protobuf", collector.http_endpoint, compression="gzip"), lines)
                ),
                "grpc": lambda: asyncio.run(
                    run_ours(n, ExporterSettings("grpc", collector.grpc_endpoint, compression="gzip"), lines)
                ),
                "grpc-plain": lambda: asyncio.run(
                    run_ours(n, ExporterSettings("grpc", collector.grpc_endpoint, compression="none"), lines)
                ),
                "sdk": lambda: run_sdk(n, collector.http_endpoint, lines, received),
            }
            labels = {
                "http": "ours  HTTP/protobuf, no compression",
                "http-lines": "ours  HTTP/protobuf, no compression, line path",
                "http-gzip": "ours  HTTP/protobuf, gzip 1",
                "grpc": "ours  gRPC, gzip 1",
                "grpc-plain": "ours  gRPC, no compression",
                "sdk": "SDK   BatchLogRecordProcessor + OTLP/HTTP (defaults)",
            }
            print(f"{n} records per round, median of {args.rounds} rounds, rotel on loopback")
            print(f"{'path':<55} {'records/s':>10} {'CPU s':>7} {'rec/CPU-s':>10} {'dropped':>9}")
            for name in args.paths:
                results = []
                for _ in range(args.rounds):
                    gc.collect()
                    results.append(plans[name]())
                seconds = statistics.median(r.seconds for r in results)
                cpu = statistics.median(r.cpu for r in results)
                dropped = statistics.median(r.dropped for r in results)
                print(
                    f"{labels[name]:<55} {n / seconds:>10,.0f} {cpu:>7.2f} {n / cpu:>10,.0f} {dropped:>9,.0f}",
                    flush=True,
                )
        finally:
            collector.stop()


if __name__ == "__main__":
    main()
