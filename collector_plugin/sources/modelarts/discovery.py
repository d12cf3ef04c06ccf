"""Finding targets through the API: training jobs by phase and name, their tasks, services.

Sources call these functions; they never decide what to read, only what exists. Response models
are tolerant on purpose: real servers send numbers as strings and leave optional fields out
(see shared/api/README.md), and a missing field must not stop discovery of everything else.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from collector_plugin.api import ApiClient, ApiError, Duration
from collector_plugin.sources.modelarts import endpoints
from collector_plugin.sources.modelarts.client import ModelArtsClient

DEFAULT_PHASES = ("Running", "Pending")
ENDED_PHASES = frozenset({"completed", "failed", "terminated", "abnormal", "stopped"})
# The spelling the search API's phase filter expects (it compares exactly).
_PHASE_SPELLING = {
    p.lower(): p
    for p in (
        "Creating",
        "Pending",
        "Running",
        "Failed",
        "Completed",
        "Terminating",
        "Terminated",
        "Abnormal",
        "Stopped",
    )
}
LOG_SERVICE_TYPES = frozenset({"real-time", "edge"})
JOB_SEARCH_PAGE_SIZE = 50  # the search API's maximum
SERVICE_PAGE_SIZE = 1000

EP_JOB = endpoints.JOB
EP_JOB_SEARCH = endpoints.JOB_SEARCH
EP_SERVICES = endpoints.SERVICES
EP_V1_FILE_NAMES = endpoints.V1_LOG_FILE_NAMES


class DiscoveryConfig(BaseModel):
    """``discovery:`` under a source: find targets through the API instead of listing them."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    interval: Duration = Field(default=60.0, description="How often the target list is refreshed.")
    phases: list[str] = Field(default_factory=lambda: list(DEFAULT_PHASES))
    name_pattern: str | None = Field(default=None, description="Regex a job or service name must match.")

    @field_validator("name_pattern")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"invalid regular expression: {err}") from None
        return value

    def name_matches(self, name: str) -> bool:
        return self.name_pattern is None or re.search(self.name_pattern, name) is not None

    def phase_matches(self, phase: str) -> bool:
        return phase.lower() in {p.lower() for p in self.phases}


class Discoverable:
    """Mixin for source configs with a ``discovery:`` key: the target list refreshes at its interval."""

    discovery: DiscoveryConfig

    @property
    def refresh_interval(self) -> float:
        if self.discovery.enabled:
            return float(self.discovery.interval)
        return float(super().refresh_interval)  # type: ignore[misc]  # SourceConfig's, next in the MRO


def is_ended(phase: str) -> bool:
    """Completed, Failed, Terminated, Abnormal, Stopped, in any letter case."""
    return phase.strip().lower() in ENDED_PHASES


@dataclass(frozen=True)
class JobInfo:
    id: str
    name: str
    phase: str
    tasks: tuple[str, ...]
    ended: bool


@dataclass
class ServiceInfo:
    id: str
    name: str
    infer_type: str
    status: str
    update_time: int | None = None  # ms; the listing's, changes when the service is updated


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _JobMetadata(_Loose):
    id: str
    name: str = ""


class _JobStatus(_Loose):
    phase: str = ""
    tasks: list[str] | None = None


class _Job(_Loose):
    metadata: _JobMetadata
    status: _JobStatus = Field(default_factory=_JobStatus)

    def info(self) -> JobInfo:
        phase = self.status.phase
        return JobInfo(
            id=self.metadata.id,
            name=self.metadata.name,
            phase=phase,
            tasks=tuple(self.status.tasks or ()),
            ended=is_ended(phase),
        )


class _JobSearchPage(_Loose):
    total: int | None = None
    count: int | None = None
    items: list[_Job] | None = None


class _Service(_Loose):
    service_id: str
    service_name: str = ""
    infer_type: str = ""
    status: str = ""
    update_time: int | None = None  # some servers send it as a string: pydantic takes "170..." too


class _ServicePage(_Loose):
    total_count: int | None = None
    count: int | None = None
    services: list[_Service] | None = None


class _FileNames(_Loose):
    is_success: bool | None = None
    log_file_list: list[str] | None = None
    error_code: str | None = None
    error_msg: str | None = None


async def get_job(client: ModelArtsClient, job_id: str) -> JobInfo:
    """The job's name, phase and task names (``GET .../training-jobs/{id}``)."""
    path = client.path(EP_JOB, training_job_id=job_id)
    job = await client.get_model(path, _Job, endpoint=EP_JOB)
    return job.info()


SHARED_SEARCH_SECONDS = 5.0  # searches this close together are one: task logs and events discover alike


@dataclass
class _Search:
    started: float
    task: asyncio.Future[list[JobInfo]]
    served: set[int]  # the configs (one per source) it answered: a source never gets one search twice


_searches: weakref.WeakKeyDictionary[ApiClient, dict[tuple[str, ...], _Search]] = weakref.WeakKeyDictionary()


async def search_jobs(client: ModelArtsClient, cfg: DiscoveryConfig) -> list[JobInfo]:
    """Every job in ``cfg.phases`` whose name matches ``cfg.name_pattern``, over all pages.

    One search serves every source of the same connection that asks for the same phases within
    :data:`SHARED_SEARCH_SECONDS` (the task log and events sources refresh together): the API
    budget is spent once. A source asking again always gets a new search; the name pattern is
    applied per caller.

    The search API's ``offset`` is a page index. The phase filter is sent to the server and
    checked again here, so a server that ignores it still yields the right jobs. The walk ends at
    a short or empty page, not at ``count``/``total`` (whose meaning varies between versions), or
    at a page that brings no new job (a server that ignores ``offset`` cannot loop us forever).
    """
    phases = tuple(sorted(p.strip().lower() for p in cfg.phases))
    shared = _searches.setdefault(client.api, {})
    now = time.monotonic()
    search = shared.get(phases)
    stale = search is None or now - search.started > SHARED_SEARCH_SECONDS or id(cfg) in search.served
    if search is None or stale or (search.task.done() and search.task.exception() is not None):
        search = shared[phases] = _Search(now, asyncio.ensure_future(_search(client, cfg)), set())
    search.served.add(id(cfg))
    jobs = await asyncio.shield(search.task)
    return [job for job in jobs if cfg.name_matches(job.name)]


async def _search(client: ModelArtsClient, cfg: DiscoveryConfig) -> list[JobInfo]:
    path = client.path(EP_JOB_SEARCH)
    found: dict[str, JobInfo] = {}
    page = 0
    while True:
        body: dict[str, Any] = {"offset": page, "limit": JOB_SEARCH_PAGE_SIZE}
        if cfg.phases:
            phases = [_PHASE_SPELLING.get(p.strip().lower(), p) for p in cfg.phases]
            body["filters"] = [{"key": "phase", "operator": "in", "value": phases}]
        result = await client.post_model(path, body, _JobSearchPage, endpoint=EP_JOB_SEARCH)
        items = result.items or []
        new = 0
        for item in items:
            info = item.info()
            if info.id not in found:
                found[info.id] = info
                new += 1
        if not items or new == 0 or len(items) < JOB_SEARCH_PAGE_SIZE:
            break
        page += 1
    return [job for job in found.values() if not cfg.phases or cfg.phase_matches(job.phase)]


async def list_services(client: ModelArtsClient, cfg: DiscoveryConfig) -> list[ServiceInfo]:
    """Every real-time and edge service whose name matches ``cfg.name_pattern``, over all pages.

    Only those two types have an update history (the logs API answers 400 for the others).
    ``cfg.phases`` concerns training jobs and is not applied to services.
    """
    path = client.path(EP_SERVICES)
    found: dict[str, ServiceInfo] = {}
    page = 0
    while True:
        params = {"offset": page, "limit": SERVICE_PAGE_SIZE}
        result = await client.get_model(path, _ServicePage, endpoint=EP_SERVICES, params=params)
        items = result.services or []
        new = 0
        for item in items:
            if item.service_id not in found:
                found[item.service_id] = ServiceInfo(
                    id=item.service_id,
                    name=item.service_name,
                    infer_type=item.infer_type,
                    status=item.status,
                    update_time=item.update_time,
                )
                new += 1
        if not items or new == 0 or len(items) < SERVICE_PAGE_SIZE:
            break
        page += 1
    return [
        svc
        for svc in found.values()
        if svc.infer_type.strip().lower() in LOG_SERVICE_TYPES and cfg.name_matches(svc.name)
    ]


async def v1_log_file_names(client: ModelArtsClient, job_id: int, version_id: int) -> list[str]:
    """Log file names of an old (v1) training job version."""
    path = client.path(EP_V1_FILE_NAMES, job_id=job_id, version_id=version_id)
    result = await client.get_model(path, _FileNames, endpoint=EP_V1_FILE_NAMES)
    if result.is_success is False:
        raise ApiError(
            endpoint=EP_V1_FILE_NAMES,
            status=200,
            error_code=result.error_code or "",
            error_msg=result.error_msg or "is_success is false",
        )
    return list(result.log_file_list or [])
