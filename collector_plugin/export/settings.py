"""Exporter settings: the ``exporter`` config, then ``OTEL_EXPORTER_OTLP_*``, then defaults."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from collector_plugin.config import ExporterConfig
from collector_plugin.errors import ConfigError

DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"
LOGS_PATH = "/v1/logs"


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

    endpoint = _resolve_endpoint(cfg, explicit, environ, protocol)
    if compression == "auto":
        compression = "none" if is_local_endpoint(endpoint) else "gzip"
    return ExporterSettings(
        protocol=protocol,
        endpoint=endpoint,
        headers=headers,
        compression=compression,
        timeout=timeout,
        ca_file=tls_value("ca_file", "CERTIFICATE"),
        cert_file=tls_value("cert_file", "CLIENT_CERTIFICATE"),
        key_file=tls_value("key_file", "CLIENT_KEY"),
        insecure=insecure,
    )


def is_local_endpoint(endpoint: str) -> bool:
    """Whether ``endpoint`` (a URL, or gRPC's ``host:port``) is a collector on this host (loopback).

    Compressing for the loopback costs CPU (gzip was 10-15 % of a catch-up) and saves nothing,
    which is why ``compression: auto`` sends plainly to a sidecar collector.
    """
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    host = (parts.hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def safe_url(url: str) -> str:
    """``url`` without user info or query string, fit for logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="", fragment="").geturl()
