"""ModelArts records: the attributes and record builders of events, service updates and logs.

Pure functions of their inputs (the observed time is passed in), so a replay of the same data
yields the same records, including ``log.record.uid``. README "Record mapping" documents them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from collector_plugin.api import (
    EMPTY_ATTRIBUTES,
    REDACTED,
    SEV_ERROR,
    SEV_INFO,
    SEV_UNSET,
    SEV_WARN,
    Attributes,
    AttrValue,
    Record,
    record_uid,
)

EVENT_TRAINING_JOB = "modelarts.training_job.event"
EVENT_SERVICE_UPDATE = "modelarts.service.update"
LOG_ATTRIBUTE_PREFIX = "modelarts.log"  # modelarts.log.offset, .continued, .partial, .restarted, .gap
EVENTS_SOURCE = "training_job_events"
SERVICE_UPDATES_SOURCE = "service_update_logs"

_EVENT_LEVELS = {"info": (SEV_INFO, "INFO"), "warning": (SEV_WARN, "WARN"), "error": (SEV_ERROR, "ERROR")}
_EVENT_SOURCES = {"k8s": "K8S", "job": "Job", "task": "Task"}
_SERVICE_SEVERITY = {"SUCCESS": SEV_INFO, "RUNNING": SEV_INFO, "FAIL": SEV_ERROR, "FAILED": SEV_ERROR}


def event_severity(level: str) -> tuple[int, str]:
    """Info=9, Warning=13, Error=17; unknown levels are 0 and keep their text."""
    found = _EVENT_LEVELS.get(level.strip().lower())
    return (found[0], level) if found else (SEV_UNSET, level)


def normalise_event_source(source: str) -> str:
    """``K8s``/``k8s`` -> ``K8S``, ``job`` -> ``Job``, ``task`` -> ``Task``; others unchanged."""
    return _EVENT_SOURCES.get(source.strip().lower(), source)


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
    resource: Attributes = EMPTY_ATTRIBUTES,
) -> Record:
    """A training job event. ``identity`` tells apart events that share time, level and text."""
    severity, _ = event_severity(level)
    return Record(
        body=message,
        uid=record_uid(project_id, EVENTS_SOURCE, job_id, identity),
        observed_ns=observed_ns,
        time_ns=time_ns,
        severity_number=severity,
        severity_text=level,
        event_name=EVENT_TRAINING_JOB,
        shared=shared,
        attributes={"modelarts.event.source": normalise_event_source(source)},
        resource=resource,
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
    resource: Attributes = EMPTY_ATTRIBUTES,
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
            project_id, SERVICE_UPDATES_SOURCE, service_id, update_time_ms, result, *((position,) if position else ())
        ),
        observed_ns=observed_ns,
        time_ns=update_time_ms * 1_000_000,
        severity_number=severity,
        severity_text=result,
        event_name=EVENT_SERVICE_UPDATE,
        shared=Attributes.of({"modelarts.service.id": service_id, "modelarts.service.name": service_name or None}),
        attributes=attributes,
        resource=resource,
    )
