"""Delivery: OTLP transports, and the pipeline that batches, retries, acknowledges and commits.

One job per module: ``settings`` (config and ``OTEL_EXPORTER_OTLP_*``), ``transports`` (HTTP,
gRPC), ``batcher`` (cutting requests), ``ledger`` (which cursors may be committed, pure) and
``pipeline`` (the coordinator). The names below are the package's public face.
"""

from collector_plugin.export.batcher import REQUEST_OVERHEAD, Batcher, QueuedSpan
from collector_plugin.export.ledger import AckLedger, split_parts
from collector_plugin.export.pipeline import Pipeline, build_pipeline
from collector_plugin.export.settings import (
    DEFAULT_GRPC_ENDPOINT,
    DEFAULT_HTTP_ENDPOINT,
    LOGS_PATH,
    ExporterSettings,
    parse_headers,
    resolve_exporter,
    safe_url,
)
from collector_plugin.export.transports import (
    GRPC_METHOD,
    GrpcTransport,
    HttpTransport,
    RetryableExportError,
    Transport,
    gzip_compress,
    make_transport,
    rejected_in_response,
)

__all__ = [
    "DEFAULT_GRPC_ENDPOINT",
    "DEFAULT_HTTP_ENDPOINT",
    "GRPC_METHOD",
    "LOGS_PATH",
    "REQUEST_OVERHEAD",
    "AckLedger",
    "Batcher",
    "ExporterSettings",
    "GrpcTransport",
    "HttpTransport",
    "Pipeline",
    "QueuedSpan",
    "RetryableExportError",
    "Transport",
    "build_pipeline",
    "gzip_compress",
    "make_transport",
    "parse_headers",
    "rejected_in_response",
    "resolve_exporter",
    "safe_url",
    "split_parts",
]
