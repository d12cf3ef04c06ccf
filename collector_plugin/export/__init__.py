"""Delivery: OTLP transports, and the pipeline that batches, retries, acknowledges and commits.

One job per module: ``settings`` (config and ``OTEL_EXPORTER_OTLP_*``), ``transports`` (HTTP,
gRPC), ``batcher`` (cutting requests), ``ledger`` (which cursors may be committed, pure) and
``pipeline`` (the coordinator). The names below are the package's public face.

Each name is imported from its module on first use (PEP 562), so resolving the exporter's
settings (``validate``, the CLI) does not load httpx, gRPC and the OTLP encoders with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collector_plugin.export.batcher import REQUEST_OVERHEAD, Batcher, QueuedSpan
    from collector_plugin.export.ledger import AckLedger, split_parts
    from collector_plugin.export.pipeline import Pipeline, build_pipeline
    from collector_plugin.export.settings import (
        DEFAULT_GRPC_ENDPOINT,
        DEFAULT_HTTP_ENDPOINT,
        LOGS_PATH,
        ExporterSettings,
        is_local_endpoint,
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

_HOMES: dict[str, tuple[str, ...]] = {
    "batcher": ("REQUEST_OVERHEAD", "Batcher", "QueuedSpan"),
    "ledger": ("AckLedger", "split_parts"),
    "pipeline": ("Pipeline", "build_pipeline"),
    "settings": (
        "DEFAULT_GRPC_ENDPOINT",
        "DEFAULT_HTTP_ENDPOINT",
        "LOGS_PATH",
        "ExporterSettings",
        "is_local_endpoint",
        "parse_headers",
        "resolve_exporter",
        "safe_url",
    ),
    "transports": (
        "GRPC_METHOD",
        "GrpcTransport",
        "HttpTransport",
        "RetryableExportError",
        "Transport",
        "gzip_compress",
        "make_transport",
        "rejected_in_response",
    ),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import a public name from its module when it is first asked for."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])


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
    "is_local_endpoint",
    "make_transport",
    "parse_headers",
    "rejected_in_response",
    "resolve_exporter",
    "safe_url",
    "split_parts",
]
