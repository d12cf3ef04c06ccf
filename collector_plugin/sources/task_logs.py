"""``training_task_logs``: task logs via the preview API, and OBS links with Range for backlogs.

The preview answers the latest part of a task's log (up to a few MB) with the log's full size,
so its content covers bytes ``[full_size - current_size, full_size)``. New bytes are taken from
it while the reader's position lies inside it; a reader further behind (first start with
``start_at: beginning``, a long outage) reads the gap from the log's temporary OBS link in ranged
requests of at most :data:`OBS_CHUNK_BYTES`, one span each, so memory stays bounded and progress
is committed as it goes. Links carry credentials: they never reach a log message, error or record.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from collector_plugin import discovery
from collector_plugin.client import parse_model
from collector_plugin.discovery import DiscoveryConfig, JobInfo
from collector_plugin.errors import ApiError, ObsLinkExpired, ResponseFormatError
from collector_plugin.hookspecs import hookimpl
from collector_plugin.lines import LineSourceConfig
from collector_plugin.mapping import task_log_attributes
from collector_plugin.records import Span
from collector_plugin.source import Reader, Source, SourceConfig, SourceContext, Target
from collector_plugin.sources.log_reader import ByteLogReader

SOURCE = "training_task_logs"
PREVIEW_PATH = "/v2/{project_id}/training-jobs/{job_id}/tasks/{task}/logs/preview"
LINK_PATH = "/v2/{project_id}/training-jobs/{job_id}/tasks/{task}/logs/url"
PREVIEW_ENDPOINT = "/v2/{project_id}/training-jobs/{training_job_id}/tasks/{task_id}/logs/preview"
LINK_ENDPOINT = "/v2/{project_id}/training-jobs/{training_job_id}/tasks/{task_id}/logs/url"
OBS_CHUNK_BYTES = 1 << 20  # one ranged OBS request, and one span, per MiB of backlog
PREVIEW_SPAN_BYTES = 1 << 20
LINK_MAX_AGE_S = 240.0  # links live 5 minutes: fetch a fresh one before that
MAX_LINK_RENEWALS = 5  # consecutive 403s without progress before giving up on this poll
MAX_OBS_MISSES = 3  # polls in a row the OBS object lacked bytes the preview is past: record a gap
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*$")


class TaskJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    name: str | None = None
    tasks: list[str] = Field(default_factory=list, description="Empty: read every task of the job.")


class TaskLogsConfig(LineSourceConfig):
    jobs: list[TaskJobConfig] = Field(default_factory=list)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)


class PreviewResponse(BaseModel):
    """``logs/preview``; old servers name the content ``context``, numbers may be strings."""

    model_config = ConfigDict(extra="ignore")

    content: str = Field(default="", validation_alias=AliasChoices("content", "context"))
    current_size: int | None = Field(default=None, ge=0)
    full_size: int = Field(ge=0)

    @field_validator("content", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value


class LinkResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    obs_url: str = Field(min_length=1)


@dataclass(frozen=True)
class TaskLogTarget:
    """One task's log. ``active`` turns False once the job ended (drain, then drop)."""

    job_id: str
    task: str
    job_name: str | None = None
    active: bool = True

    @property
    def key(self) -> str:
        return f"{SOURCE}/{self.job_id}/{self.task}"


class _StreamBroken(Exception):
    """The OBS answer broke off mid-body; the range is requested again."""


class TaskLogReader(ByteLogReader):
    """Reads one task's log from its cursor on (see the module docstring)."""

    def __init__(self, target: TaskLogTarget, config: TaskLogsConfig, context: SourceContext, cursor: str | None):
        super().__init__(
            key=target.key,
            source=SOURCE,
            config=config,
            context=context,
            shared=task_log_attributes(target.job_id, target.task, target.job_name),
            cursor=cursor,
        )
        client = context.client
        self._client = client
        self._preview_path = client.path(PREVIEW_PATH, job_id=target.job_id, task=target.task)
        self._link_path = client.path(LINK_PATH, job_id=target.job_id, task=target.task)
        self._link: str | None = None
        self._link_ns = 0
        self._obs_misses = 0

    async def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
        preview = await self._client.get_model(self._preview_path, PreviewResponse, endpoint=PREVIEW_ENDPOINT)
        size = preview.full_size
        content = preview.content.encode("utf-8")
        covered = preview.current_size if preview.current_size is not None else len(content)
        # Content that does not re-encode to its own size held invalid UTF-8: not byte-exact.
        exact = covered == len(content) and covered <= size
        preview_start = size - covered if exact else size
        if self.assembler is None:
            if self.resume is not None:
                self.start(self.resume.offset, self.resume.continued)
            else:
                self.start(self._first_offset(size, content if exact else b""))
                yield self.empty_span()
        if size < self.position:
            yield self.restarted(size)
        if self.position < preview_start:
            before = self.position
            async for span in self._read_obs(before, preview_start):
                yield span
            self._obs_misses = 0 if self.position > before else self._obs_misses + 1
            if self.position < preview_start and (draining or self._obs_misses >= MAX_OBS_MISSES):
                yield self.gap(preview_start, "the OBS object does not hold these bytes")
                self._obs_misses = 0
        pos = self.position
        if preview_start <= pos < size:
            data = content[pos - preview_start :]
            for i in range(0, len(data), PREVIEW_SPAN_BYTES):
                yield self.span(data[i : i + PREVIEW_SPAN_BYTES], pos + i)
        flushed = self.flush_span(draining=draining)
        if flushed is not None:
            yield flushed
        self.lag(size)

    def _first_offset(self, size: int, content: bytes) -> int:
        """``beginning``: 0. ``end``: the start of the last, unfinished line if the preview shows it."""
        if self.config.start_at == "beginning":
            return 0
        newline = content.rfind(b"\n")
        if newline < 0:
            return 0 if len(content) == size else size
        return size - len(content) + newline + 1

    async def _read_obs(self, start: int, stop: int) -> AsyncIterator[Span]:
        pos = start
        while pos < stop:
            data = await self._obs_range(pos, min(stop, pos + OBS_CHUNK_BYTES))
            if not data:
                return  # the object is shorter than the preview said: the next poll looks again
            yield self.span(data, pos)
            pos += len(data)

    async def _obs_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the log from its OBS link (fewer if the object is shorter)."""
        renewals = 0
        broken = 0
        while True:
            url = await self._obs_link()
            try:
                async with self._client.stream_obs(url, start, end - 1) as response:
                    return await _read_body(response, start, end)
            except ObsLinkExpired:
                self._link = None
                renewals += 1
                if renewals > MAX_LINK_RENEWALS:
                    raise
            except _StreamBroken:
                broken += 1
                if broken >= self._client.retry.max_attempts:
                    raise ApiError(endpoint="obs", status=0, error_msg="the answer broke off repeatedly") from None

    async def _obs_link(self) -> str:
        now = self.context.clock_ns()
        if self._link is None or now - self._link_ns > LINK_MAX_AGE_S * 1e9:
            data = await self._client.request_json(
                "GET", self._link_path, endpoint=LINK_ENDPOINT, headers={"Content-Type": "text/plain"}
            )
            self._link = parse_model(LinkResponse, data, LINK_ENDPOINT).obs_url
            self._link_ns = now
        return self._link


async def _read_body(response: httpx.Response, start: int, end: int) -> bytes:
    """The bytes ``[start, end)`` of an OBS answer: 206 from its Content-Range, 200 from 0."""
    if response.status_code == 416:
        return b""
    skip = start
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        first = int(match.group(1)) if match else start
        if first > start:
            raise ResponseFormatError("obs", "Content-Range", f"range starts at {first}, after {start}")
        skip = start - first
    want = end - start
    buf = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk = chunk[skip:]
                skip = 0
            buf += chunk[: want - len(buf)]
            if len(buf) >= want:
                break
    except httpx.HTTPError:
        raise _StreamBroken from None
    return bytes(buf)


class TaskLogsSource:
    name: ClassVar[str] = SOURCE
    description: ClassVar[str] = "Training task logs (v2 preview API, OBS links for backlogs)"
    config_model: ClassVar[type[SourceConfig]] = TaskLogsConfig

    def __init__(self, config: TaskLogsConfig, context: SourceContext) -> None:
        self.config = config
        self.context = context
        self._discovered: dict[str, JobInfo] = {}

    async def targets(self) -> Sequence[Target]:
        """Tasks of the configured jobs (listed, or from the job's details) and of discovered jobs.

        A discovered job that no longer matches the search is looked up once more: if it
        ended, its tasks are returned inactive so they are drained before they are dropped.
        """
        out: list[TaskLogTarget] = []
        configured = {job.id for job in self.config.jobs}
        for job in self.config.jobs:
            info = await self._job_info(job.id, quiet=bool(job.tasks))
            if info is None and not job.tasks:
                continue
            tasks = job.tasks or list(info.tasks if info else ())
            name = job.name or (info.name if info else None) or None
            active = not (info.ended if info else False)
            out += [TaskLogTarget(job.id, task, name, active) for task in tasks]
        if self.config.discovery.enabled:
            found = {info.id: info for info in await discovery.search_jobs(self.context.client, self.config.discovery)}
            for job_id, known in list(self._discovered.items()):
                if job_id in found:
                    continue
                info = await self._job_info(job_id, quiet=True)
                if info is None or info.ended:
                    del self._discovered[job_id]
                    found[job_id] = _ended(info or known)
                else:
                    found[job_id] = info
            for job_id, info in found.items():
                if job_id in configured:
                    continue
                if not info.ended:
                    self._discovered[job_id] = info
                out += [TaskLogTarget(job_id, task, info.name or None, not info.ended) for task in info.tasks]
        return out

    async def _job_info(self, job_id: str, *, quiet: bool) -> JobInfo | None:
        try:
            return await discovery.get_job(self.context.client, job_id)
        except (ApiError, ResponseFormatError) as exc:
            log = self.context.logger.debug if quiet else self.context.logger.warning
            log("%s: cannot read the details of training job %s: %s", SOURCE, job_id, exc)
            return None

    def open(self, target: Any, cursor: str | None) -> Reader:
        if not isinstance(target, TaskLogTarget):
            raise TypeError(f"{SOURCE} cannot read {type(target).__name__}")
        return TaskLogReader(target, self.config, self.context, cursor)


def _ended(info: JobInfo) -> JobInfo:
    return JobInfo(id=info.id, name=info.name, phase=info.phase, tasks=info.tasks, ended=True)


@hookimpl
def register_sources(register: Callable[[type[Source]], None]) -> None:
    register(TaskLogsSource)
