"""Pure mapping: log lines, events and service updates to OpenTelemetry records.

This module is the contract documented in README "Record mapping". Everything here is a pure
function of its inputs (the observed time is passed in), so a replay of the same data yields the
same records, including ``log.record.uid``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from collector_plugin.records import (
    SERVICE_INFERENCE,
    SERVICE_TRAINING,
    Attributes,
    AttrValue,
    Record,
)

# OpenTelemetry severity numbers (logs data model).
SEV_UNSET, SEV_DEBUG, SEV_INFO, SEV_WARN, SEV_ERROR, SEV_FATAL = 0, 5, 9, 13, 17, 21

EVENT_TRAINING_JOB = "modelarts.training_job.event"
EVENT_SERVICE_UPDATE = "modelarts.service.update"
EVENT_LOG_RESTARTED = "modelarts.log.restarted"
EVENT_LOG_GAP = "modelarts.log.gap"
REDACTED = "[REDACTED]"

_LINE_LEVELS = {
    "DEBUG": SEV_DEBUG,
    "INFO": SEV_INFO,
    "WARN": SEV_WARN,
    "WARNING": SEV_WARN,
    "ERROR": SEV_ERROR,
    "CRITICAL": SEV_FATAL,
    "FATAL": SEV_FATAL,
}
# An upper-case level token near the start of the line, not part of a longer word.
_LEVEL_TOKEN = re.compile(r"(?<![A-Za-z0-9_])(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)(?![A-Za-z0-9_])")
_LEVEL_SCAN = 160  # characters of a line searched for a level token

_EVENT_LEVELS = {"info": (SEV_INFO, "INFO"), "warning": (SEV_WARN, "WARN"), "error": (SEV_ERROR, "ERROR")}
_EVENT_SOURCES = {"k8s": "K8S", "job": "Job", "task": "Task"}
_SERVICE_SEVERITY = {"SUCCESS": SEV_INFO, "RUNNING": SEV_INFO, "FAIL": SEV_ERROR, "FAILED": SEV_ERROR}


def record_uid(*parts: object) -> str:
    """A stable 128-bit id (hex) from what a record is: project, source, target, position."""
    joined = "\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(joined, digest_size=16).hexdigest()


def line_severity(line: str) -> tuple[int, str]:
    """Severity from the first level token in a line (``[INFO]``, ``ERROR:``, ``WARN`` ...)."""
    match = _LEVEL_TOKEN.search(line, 0, _LEVEL_SCAN)
    if match is None:
        return SEV_UNSET, ""
    token = match.group(1)
    return _LINE_LEVELS[token], token


def event_severity(level: str) -> tuple[int, str]:
    """Info=9, Warning=13, Error=17; unknown levels are 0 and keep their text."""
    found = _EVENT_LEVELS.get(level.strip().lower())
    return (found[0], level) if found else (SEV_UNSET, level)


def normalise_event_source(source: str) -> str:
    """``K8s``/``k8s`` -> ``K8S``, ``job`` -> ``Job``, ``task`` -> ``Task``; others unchanged."""
    return _EVENT_SOURCES.get(source.strip().lower(), source)


def parse_resource_env(value: str) -> dict[str, str]:
    """Parse ``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, percent-encoded values)."""
    out: dict[str, str] = {}
    for item in value.split(","):
        key, sep, val = item.partition("=")
        if sep and key.strip():
            out[unquote(key.strip())] = unquote(val.strip())
    return out


def resource_attributes(
    *,
    service: str,
    region: str,
    project_id: str,
    configured: Mapping[str, AttrValue] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Attributes:
    """The resource for one ``service.name``: defaults < OTEL_RESOURCE_ATTRIBUTES < config.

    Only low-cardinality values live here (Loki indexes resource attributes as labels); job,
    task and service ids are record attributes.
    """
    attrs: dict[str, AttrValue] = {
        "service.name": service,
        "cloud.provider": "huawei_cloud",
        "cloud.platform": "huawei_cloud_modelarts",
        "cloud.region": region,
        "modelarts.project.id": project_id,
    }
    env = environ or {}
    attrs.update(parse_resource_env(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    if env.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = env["OTEL_SERVICE_NAME"]
    attrs.update(configured or {})
    return Attributes((k, v) for k, v in attrs.items() if v != "")


class LineMapper:
    """Builds the records of one log target; its constant attributes are built once."""

    __slots__ = ("_last_severity", "_uid_prefix", "project_id", "service", "shared", "source", "target")

    def __init__(
        self, *, project_id: str, source: str, target: str, shared: Attributes, service: str = SERVICE_TRAINING
    ) -> None:
        self.project_id = project_id
        self.source = source
        self.target = target
        self.shared = shared
        self.service = service
        self._last_severity = (SEV_UNSET, "")
        # record_uid(project, source, target, offset) with the constant part joined once (hot path)
        self._uid_prefix = "\x1f".join((project_id, source, target, "")).encode("utf-8", "surrogatepass")

    def record(
        self,
        text: str,
        offset: int,
        observed_ns: int,
        *,
        continued: bool = False,
        partial: bool = False,
        progress: bool = False,
    ) -> Record:
        """One record for one line (or one piece of a split line) starting at byte ``offset``.

        ``progress``: a sample of a line still being redrawn by ``\\r`` (a progress bar); its final
        state comes later as an ordinary record.
        """
        if continued:
            severity = self._last_severity
        else:
            severity = self._last_severity = line_severity(text)
        attributes: dict[str, AttrValue] = {"modelarts.log.offset": offset}
        if continued:
            attributes["modelarts.log.continued"] = True
        if partial:
            attributes["modelarts.log.partial"] = True
        if progress:
            attributes["modelarts.log.progress"] = True
        return Record(
            body=text,
            uid=hashlib.blake2b(self._uid_prefix + b"%d" % offset, digest_size=16).hexdigest(),
            observed_ns=observed_ns,
            severity_number=severity[0],
            severity_text=severity[1],
            shared=self.shared,
            attributes=attributes,
            service=self.service,
        )

    def restarted(self, *, size: int, cursor: int, observed_ns: int) -> Record:
        """A record saying the log became shorter than what was read: it is read again from 0."""
        return Record(
            body=f"log restarted: it is now {size} bytes, shorter than the {cursor} bytes already read; "
            "reading it again from the start",
            uid=record_uid(self.project_id, self.source, self.target, "restart", cursor, size, observed_ns),
            observed_ns=observed_ns,
            time_ns=observed_ns,
            severity_number=SEV_WARN,
            severity_text="WARN",
            event_name=EVENT_LOG_RESTARTED,
            shared=self.shared,
            attributes={"modelarts.log.previous_size": cursor, "modelarts.log.size": size},
            service=self.service,
        )

    def gap(self, *, start: int, end: int, reason: str, observed_ns: int) -> Record:
        """A record saying bytes ``[start, end)`` could not be read (the API no longer has them)."""
        return Record(
            body=f"log gap: bytes {start}-{end} could not be read ({reason})",
            uid=record_uid(self.project_id, self.source, self.target, "gap", start, end),
            observed_ns=observed_ns,
            time_ns=observed_ns,
            severity_number=SEV_WARN,
            severity_text="WARN",
            event_name=EVENT_LOG_GAP,
            shared=self.shared,
            attributes={
                "modelarts.log.gap.start": start,
                "modelarts.log.gap.end": end,
                "modelarts.log.gap.reason": reason,
            },
            service=self.service,
        )


def task_log_attributes(job_id: str, task_id: str, job_name: str | None = None) -> Attributes:
    return Attributes.of(
        {"modelarts.training_job.id": job_id, "modelarts.training_job.name": job_name, "modelarts.task.id": task_id}
    )


def v1_log_attributes(job_id: int | str, version_id: int | str, file_name: str) -> Attributes:
    return Attributes.of(
        {
            "modelarts.training_job.id": str(job_id),
            "modelarts.training_job.version.id": str(version_id),
            "log.file.name": file_name,
        }
    )


def event_job_attributes(job_id: str, job_name: str | None = None) -> Attributes:
    return Attributes.of({"modelarts.training_job.id": job_id, "modelarts.training_job.name": job_name})


def event_record(
    *,
    project_id: str,
    shared: Attributes,
    job_id: str,
    time_ns: int,
    level: str,
    message: str,
    source: str,
    identity: str,
    observed_ns: int,
) -> Record:
    """A training job event. ``identity`` tells apart events that share time, level and text."""
    severity, _ = event_severity(level)
    return Record(
        body=message,
        uid=record_uid(project_id, "training_job_events", job_id, identity),
        observed_ns=observed_ns,
        time_ns=time_ns,
        severity_number=severity,
        severity_text=level,
        event_name=EVENT_TRAINING_JOB,
        shared=shared,
        attributes={"modelarts.event.source": normalise_event_source(source)},
    )


def redact_envs(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a service config entry with every ``envs`` value replaced (keys kept)."""
    out = dict(config)
    envs = out.get("envs")
    if isinstance(envs, Mapping):
        out["envs"] = {str(k): REDACTED for k in envs}
    elif envs is not None:
        out["envs"] = REDACTED
    return out


def _attr(value: Any) -> AttrValue | None:
    """Coerce JSON data to an attribute value (None dropped, nested lists/maps kept)."""
    if value is None:
        return None
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): v for k, v in ((k, _attr(v)) for k, v in value.items()) if v is not None}
    if isinstance(value, (list, tuple)):
        return [v for v in (_attr(v) for v in value) if v is not None]
    return str(value)


def _describe_models(configs: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for cfg in configs:
        name = cfg.get("model_name") or cfg.get("model_id") or "model"
        text = f"{name} {cfg.get('model_version', '')}".strip()
        extras = []
        if cfg.get("weight") is not None:
            extras.append(f"weight {cfg['weight']}%")
        if cfg.get("instance_count") is not None:
            extras.append(f"{cfg['instance_count']}x {cfg.get('specification') or 'instance'}")
        parts.append(f"{text} ({', '.join(extras)})" if extras else text)
    return "; ".join(parts)


def service_update_record(
    *,
    project_id: str,
    service_id: str,
    service_name: str,
    update_time_ms: int,
    result: str,
    config: Iterable[Mapping[str, Any]] = (),
    success_num: int | None = None,
    failed_num: int | None = None,
    result_detail: Iterable[Mapping[str, Any]] | None = None,
    observed_ns: int,
    position: int = 0,
) -> Record:
    """One record per state an update reaches; ``envs`` values never leave this function.

    ``position`` tells apart updates that share ``update_time`` (0 for the first keeps the uid
    of an update alone at its time unchanged).
    """
    configs = [redact_envs(c) for c in config]
    body = f"service {service_name or service_id} update {result}"
    models = _describe_models(configs)
    if models:
        body += f": {models}"
    if success_num is not None or failed_num is not None:
        body += f" [nodes ok {success_num or 0}, failed {failed_num or 0}]"
    attributes: dict[str, AttrValue] = {
        "modelarts.service.update.result": result,
        "modelarts.service.update.time": update_time_ms,
    }
    for key, value in (
        ("modelarts.service.config", _attr(configs) if configs else None),
        ("modelarts.service.update.success_num", success_num),
        ("modelarts.service.update.failed_num", failed_num),
        ("modelarts.service.update.result_detail", _attr(list(result_detail)) if result_detail else None),
    ):
        if value is not None:
            attributes[key] = value
    severity = _SERVICE_SEVERITY.get(result.upper(), SEV_UNSET)
    return Record(
        body=body,
        uid=record_uid(
            project_id, "service_update_logs", service_id, update_time_ms, result, *((position,) if position else ())
        ),
        observed_ns=observed_ns,
        time_ns=update_time_ms * 1_000_000,
        severity_number=severity,
        severity_text=result,
        event_name=EVENT_SERVICE_UPDATE,
        shared=Attributes.of({"modelarts.service.id": service_id, "modelarts.service.name": service_name or None}),
        attributes=attributes,
        service=SERVICE_INFERENCE,
    )
