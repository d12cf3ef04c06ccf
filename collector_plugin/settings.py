"""Config resolved once: the validated file plus the environment, as frozen settings.

``run`` and ``validate`` both go through :func:`load_settings`, so ``validate`` rejects exactly
what start-up would; it does everything but network I/O (and opening the checkpoint store).

Two steps, each with one job: :mod:`collector_plugin.config` reads the file (``${env:...}``
substitution, the ``HUAWEICLOUD_SDK_*`` credential fallbacks, per-key validation);
:func:`resolve` adds what lives only in the environment (``OTEL_EXPORTER_OTLP_*``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``) and checks what spans both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from collector_plugin.config import Config, check_url, iam_endpoint, load_config, parse_listen_address
from collector_plugin.errors import ConfigError
from collector_plugin.export.settings import ExporterSettings, resolve_exporter  # not the pipeline
from collector_plugin.mapping import resource_attributes
from collector_plugin.records import Attributes, AttrValue

if TYPE_CHECKING:
    from collector_plugin.plugins import RegisteredSource

RESOURCE_ENV = ("OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME")


@dataclass(frozen=True)
class ResourceSettings:
    """What every source's resource is merged with: ``resource:`` config and ``OTEL_RESOURCE_*``."""

    configured: Mapping[str, AttrValue] = field(default_factory=dict)
    environ: Mapping[str, str] = field(default_factory=dict)

    def resource(self, source_attributes: Mapping[str, AttrValue | None]) -> Attributes:
        """A source's resource attributes under ``OTEL_RESOURCE_ATTRIBUTES`` and ``resource:`` config."""
        return resource_attributes(source_attributes, configured=self.configured, environ=self.environ)


@dataclass(frozen=True)
class TelemetrySettings:
    """The self-telemetry listener (``None`` address when ``telemetry.listen`` is ``""``)."""

    listen: str
    address: tuple[str, int] | None
    log_level: Literal["debug", "info", "warning", "error"]
    log_format: Literal["auto", "json", "text"]


@dataclass(frozen=True)
class AuthSettings:
    """How the receiver authenticates; ``iam_endpoint`` only for a password login."""

    method: Literal["aksk", "token", "password"]
    iam_endpoint: str = ""


@dataclass(frozen=True)
class Settings:
    """Everything start-up needs, resolved and checked. ``config`` keeps the sources' models."""

    config: Config
    exporter: ExporterSettings
    resource: ResourceSettings
    auth: AuthSettings
    telemetry: TelemetrySettings
    checkpoint_path: str


def _file_problems(config: Config, exporter: ExporterSettings) -> list[str]:
    """Files start-up reads (CA bundles, client certificates) must be readable now."""
    files = {
        "modelarts.ca_file": config.modelarts.ca_file,
        "exporter.tls.ca_file (or OTEL_EXPORTER_OTLP_CERTIFICATE)": exporter.ca_file,
        "exporter.tls.cert_file (or OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE)": exporter.cert_file,
        "exporter.tls.key_file (or OTEL_EXPORTER_OTLP_CLIENT_KEY)": exporter.key_file,
    }
    problems = []
    for key, path in files.items():
        if not path:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            problems.append(f"{key}: cannot read {path!r} ({exc.strerror or exc})")
    return problems


def _exporter_endpoint_problems(exporter: ExporterSettings) -> list[str]:
    """The config file's endpoint is checked by the model; this catches one from the environment."""
    if exporter.protocol == "grpc" and "://" not in exporter.endpoint:
        return []
    try:
        check_url(exporter.endpoint)
    except ValueError as exc:
        return [f"exporter.endpoint (or OTEL_EXPORTER_OTLP_[LOGS_]ENDPOINT): {exc}"]
    return []


def _checkpoint_problems(path: str) -> list[str]:
    if Path(path).expanduser().is_dir():
        return [f"checkpoint.path: {path!r} is a directory: point it at a file inside it"]
    return []


def resolve(config: Config, environ: Mapping[str, str]) -> Settings:
    """Resolve a validated config against ``environ``; :class:`ConfigError` lists every problem."""
    exporter = resolve_exporter(config.exporter, environ)  # raises for a bad OTEL_* variable
    problems = _exporter_endpoint_problems(exporter) + _file_problems(config, exporter)
    problems += _checkpoint_problems(config.checkpoint.path)
    if problems:
        raise ConfigError(problems)
    ma = config.modelarts
    auth_method = ma.auth.method
    telemetry = config.telemetry
    return Settings(
        config=config,
        exporter=exporter,
        resource=ResourceSettings(
            configured=MappingProxyType(dict(config.resource.attributes)),
            environ=MappingProxyType({k: environ[k] for k in RESOURCE_ENV if k in environ}),
        ),
        auth=AuthSettings(auth_method, iam_endpoint(ma.auth, ma.region) if auth_method == "password" else ""),
        telemetry=TelemetrySettings(
            listen=telemetry.listen,
            address=parse_listen_address(telemetry.listen) if telemetry.listen else None,
            log_level=telemetry.log_level,
            log_format=telemetry.log_format,
        ),
        checkpoint_path=str(Path(config.checkpoint.path).expanduser()),
    )


def load_settings(
    path: str | Path,
    registry: Mapping[str, RegisteredSource],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read, validate and resolve a config file: the one path ``run`` and ``validate`` share."""
    environ = os.environ if environ is None else environ
    config = load_config(path, registry, environ=environ)
    try:
        return resolve(config, environ)
    except ConfigError as exc:
        if exc.source != "config":
            raise
        raise ConfigError(exc.problems, str(path)) from None
