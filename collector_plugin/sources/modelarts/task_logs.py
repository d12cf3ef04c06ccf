"""``training_task_logs``: task logs via the preview API, and OBS links with Range for backlogs.

The preview answers the latest part of a task's log (up to a few MB) with the log's full size,
so its content covers bytes ``[full_size - current_size, full_size)``. New bytes are taken from
it while the reader's position lies inside it; a reader further behind (first start with
``start_at: beginning``, a long outage) reads the gap from the log's temporary OBS link with one
ranged request, streamed, yielding a span per :data:`OBS_CHUNK_BYTES`, so memory stays bounded and
progress is committed as it goes. A reader that knows where it starts (a committed cursor, or
``start_at: beginning``) reads from OBS at once and fetches no preview; a live read that finds
itself behind the preview goes on to the log's end from OBS and lets the preview's bytes go:
eight logs catching up at once would otherwise each hold 5 MB of preview while their gaps go
out. What a lagging OBS object lacks comes from the next (immediate) preview.

A reader that has caught up reads what is new with ``Range: bytes=position-`` on the (cached,
renewed before it expires) link instead of the preview: only the new bytes travel instead of up
to 5 MB of JSON per poll, and OBS reads spend none of the API budget (only a link, every few
minutes, does). The answer's ``Content-Range`` gives the log size. When the OBS object is
behind the position (it lags the preview by a few seconds, or the log restarted shorter) or the
link does not say its size, the reader falls back to the preview, which also notices restarts.
Links carry credentials: they never reach a log message, error or record.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from collector_plugin.api import (
    AnswerBrokeOff,
    ApiError,
    LineSourceConfig,
    LinkAnswer,
    ObsLinkExpired,
    Reader,
    ResponseFormatError,
    Source,
    SourceConfig,
    SourceContext,
    Span,
    Target,
    hookimpl,
    parse_model,
)
from collector_plugin.sources.modelarts import discovery, endpoints
from collector_plugin.sources.modelarts.client import (
    SERVICE_TRAINING,
    ModelArtsClient,
    StreamsConfig,
    modelarts_client,
    stream_resource,
)
from collector_plugin.sources.modelarts.discovery import Discoverable, DiscoveryConfig, JobInfo
from collector_plugin.sources.modelarts.log_reader import ByteLogReader
from collector_plugin.sources.modelarts.records import task_log_attributes

SOURCE = "training_task_logs"
OBS_CHUNK_BYTES = 256 << 10  # a span per 256 KiB of a streamed OBS range: the event loop breathes between spans
PREVIEW_SPAN_BYTES = 256 << 10
LINK_MAX_AGE_S = 240.0  # links live 5 minutes: fetch a fresh one before that
MAX_LINK_RENEWALS = 5  # consecutive 403s without progress before giving up on this poll
MAX_OBS_MISSES = 3  # polls in a row the OBS object lacked bytes the preview is past: record a gap
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$")


class TaskJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    name: str | None = None
    tasks: list[str] = Field(default_factory=list, description="Empty: read every task of the job.")


class TaskLogsConfig(Discoverable, StreamsConfig, LineSourceConfig):
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


class TaskLogReader(ByteLogReader):
    """Reads one task's log from its cursor on (see the module docstring)."""

    def __init__(
        self,
        target: TaskLogTarget,
        config: TaskLogsConfig,
        context: SourceContext,
        client: ModelArtsClient,
        cursor: str | None,
    ) -> None:
        super().__init__(
            key=target.key,
            source=SOURCE,
            config=config,
            context=context,
            client=client,
            shared=task_log_attributes(target.job_id, target.task, target.job_name),
            resource=stream_resource(context, config, SERVICE_TRAINING, f"{target.job_id}/{target.task}"),
            cursor=cursor,
            ended=not target.active,
        )
        self._client = client
        ids = {"training_job_id": target.job_id, "task_id": target.task}
        self._preview_path = client.path(endpoints.TASK_LOG_PREVIEW, **ids)
        self._link_path = client.path(endpoints.TASK_LOG_URL, **ids)
        self._link: str | None = None
        self._link_ns = 0
        self._obs_misses = 0
        self._obs_size: int | None = None
        self._obs_sizes_known = True
        self._tail_via_obs = False

    async def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
        self.begin_poll(draining=draining)
        self.status.behind = False
        if self.assembler is None and not draining and (self.resume is not None or self.config.start_at == "beginning"):
            # Where reading starts is known without the preview: read from OBS first, so a
            # catch-up never fetches (and holds) megabytes of preview it would not use.
            if (opened := self._open_at(0)) is not None:
                yield opened
            self._tail_via_obs = True
        if self.assembler is not None and not draining and self._tail_via_obs:
            tailed = False
            async for span in self._tail_from_obs():
                if span is None:
                    tailed = True
                else:
                    yield span
            if tailed:
                return
        size, content, preview_start = await self._preview()
        if self.assembler is None and (opened := self._open_at(self.first_offset(size, content))) is not None:
            yield opened
        if size < self.position or self.rewritten(content, preview_start):
            yield self.restarted(size)
        if self.position < preview_start:
            # Behind the preview: once OBS answers, a live read streams the rest from it too
            # rather than hold the preview's megabytes while the gap goes out span by span
            # (what a lagging OBS object lacks comes from the next poll's preview). A drain, one
            # log at a time, uses the preview it fetched for the size it needs anyway.
            before = self.position
            async for span in self._read_obs(before, preview_start if draining else size):
                if not draining:
                    content = b""
                yield span
            self._obs_misses = 0 if self.position > before else self._obs_misses + 1
            if self.position < preview_start and (draining or self._obs_misses >= MAX_OBS_MISSES):
                yield self.gap(preview_start, "the OBS object does not hold these bytes")
                self._obs_misses = 0
            if not content:
                self.status.behind = preview_start <= self.position < size  # the next preview holds the rest
        pos = self.position
        if preview_start <= pos < size:
            data = content[pos - preview_start :]
            for i in range(0, len(data), PREVIEW_SPAN_BYTES):
                for span in self.spans(data[i : i + PREVIEW_SPAN_BYTES], pos + i):
                    yield span
        flushed = self.flush_span(draining=draining)
        if flushed is not None:
            yield flushed
        self.lag(size)
        self._tail_via_obs = self._obs_sizes_known and self.position >= size
        if (completed := self.complete_span(size, draining=draining)) is not None:
            yield completed

    def _open_at(self, first: int) -> Span | None:
        """Start at the committed cursor, or at ``first``: a fresh start, whose cursor is committed
        at once (the span returned)."""
        if self.resume is not None:
            self.resume_at_cursor(self.resume)
            return None
        self.start(first)
        return self.empty_span()

    async def _preview(self) -> tuple[int, bytes, int]:
        """(log size, the preview's bytes, where they start in the log); a preview that is not
        byte-exact (invalid UTF-8 re-encodes to another size) starts at the end: no bytes of it
        are used. Only the bytes outlive this call, not the JSON text or its string."""
        preview = await self._client.get_model(self._preview_path, PreviewResponse, endpoint=endpoints.TASK_LOG_PREVIEW)
        size, content = preview.full_size, preview.content.encode("utf-8")
        covered = preview.current_size if preview.current_size is not None else len(content)
        if covered != len(content) or covered > size:
            return size, b"", size
        return size, content, size - covered

    async def _tail_from_obs(self) -> AsyncIterator[Span | None]:
        """Read what is new from the OBS link; a final ``None`` means done (no preview needed)."""
        self._obs_size = None
        try:
            async for span in self._read_obs(self.position, None, verify=self.recent):
                yield span
        except _Rewritten:
            yield self.restarted(self._obs_size or 0)
            self._tail_via_obs = False  # read the new log from 0 through the preview, this poll
            return
        except (ApiError, ResponseFormatError) as exc:
            self.context.logger.debug("%s: OBS tail read failed, using the preview: %s", self.key, exc)
            self._tail_via_obs = False
            return
        size = self._obs_size
        if size is None:
            self._obs_sizes_known = False  # this OBS does not say its size: the preview it is
            self._tail_via_obs = False
            return
        if size < self.position:
            self._tail_via_obs = False  # lagging or restarted shorter: the preview says which
            return
        flushed = self.flush_span(draining=False)
        if flushed is not None:
            yield flushed
        self.lag(size)
        yield None

    async def _read_obs(self, start: int, stop: int | None, *, verify: bytes = b"") -> AsyncIterator[Span]:
        """Stream bytes ``[start, stop)`` (``None``: to the end) from the OBS link, a span per OBS_CHUNK_BYTES.

        One ranged request; a fresh link on 403, and a new request from the last byte handed on
        when the answer breaks off. Ends early when the object is shorter. ``verify``: bytes that
        must precede ``start``; the range starts that much earlier and :class:`_Rewritten` is
        raised when they differ (the log was rewritten under the cursor).
        """
        pos = start
        check = verify
        renewals = broken = 0
        while stop is None or pos < stop:
            url = await self._obs_link()
            buf = bytearray()
            try:
                first = pos - len(check)
                async with self._client.stream_obs(url, first, None if stop is None else stop - 1) as response:
                    skip = self._answer_offset(response, first)
                    if skip is None:
                        return
                    async for chunk in response.chunks():
                        if skip:
                            if len(chunk) <= skip:
                                skip -= len(chunk)
                                continue
                            chunk, skip = chunk[skip:], 0
                        if check:
                            head, chunk = chunk[: len(check)], chunk[len(check) :]
                            if head != check[: len(head)]:
                                raise _Rewritten
                            check = check[len(head) :]
                        if stop is not None:
                            chunk = chunk[: stop - pos - len(buf)]
                        buf += chunk
                        while len(buf) >= OBS_CHUNK_BYTES:
                            piece = bytes(buf[:OBS_CHUNK_BYTES])
                            del buf[:OBS_CHUNK_BYTES]
                            renewals = broken = 0
                            for span in self.spans(piece, pos):
                                yield span
                            pos = self.position
                        if stop is not None and pos + len(buf) >= stop:
                            break
                if buf:
                    for span in self.spans(bytes(buf), pos):
                        yield span
                return
            except ObsLinkExpired:
                self._link = None
                renewals += 1
                if renewals > MAX_LINK_RENEWALS:
                    raise
            except AnswerBrokeOff:
                broken += 1
                if self._client.api.retry.exhausted(broken):
                    raise ApiError(
                        endpoint=endpoints.OBS, status=0, error_msg="the answer broke off repeatedly"
                    ) from None

    def _answer_offset(self, response: LinkAnswer, start: int) -> int | None:
        """Bytes to skip before ``start`` in this answer (None: nothing there); notes the log size."""
        skip, size = answer_window(response.status, response.header("content-range"), start)
        if size is not None:
            self._obs_size = size
        return skip

    async def _obs_link(self) -> str:
        now = self.context.clock_ns()
        if self._link is None or now - self._link_ns > LINK_MAX_AGE_S * 1e9:
            data = await self._client.request_json(
                "GET", self._link_path, endpoint=endpoints.TASK_LOG_URL, headers={"Content-Type": "text/plain"}
            )
            self._link = parse_model(LinkResponse, data, endpoints.TASK_LOG_URL).obs_url
            self._link_ns = now
        return self._link


class _Rewritten(Exception):
    """The bytes before the position are not what was read: the log was rewritten (restarted)."""


def answer_window(status: int, content_range: str, start: int) -> tuple[int | None, int | None]:
    """Where byte ``start`` lies in an OBS answer, and the object's size when the answer says it.

    206: from its ``Content-Range``; 200 (Range ignored): the whole object, from byte 0;
    416: nothing there (``bytes */SIZE`` still gives the size).
    """
    match = _CONTENT_RANGE.match(content_range)
    size = int(match.group(2)) if match and match.group(2) != "*" else None
    if status == 416:
        return None, size
    if status == 206:
        first = int(match.group(1)) if match and match.group(1) else start
        if first > start:
            raise ResponseFormatError(endpoints.OBS, "Content-Range", f"range starts at {first}, after {start}")
        return start - first, size
    return start, size


class TaskLogsSource:
    name: ClassVar[str] = SOURCE
    description: ClassVar[str] = "Training task logs (v2 preview API, OBS links for backlogs)"
    config_model: ClassVar[type[SourceConfig]] = TaskLogsConfig

    def __init__(self, config: TaskLogsConfig, context: SourceContext) -> None:
        self.config = config
        self.context = context
        self.client = modelarts_client(context)
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
            found = {info.id: info for info in await discovery.search_jobs(self.client, self.config.discovery)}
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
            return await discovery.get_job(self.client, job_id)
        except (ApiError, ResponseFormatError) as exc:
            log = self.context.logger.debug if quiet else self.context.logger.warning
            log("%s: cannot read the details of training job %s: %s", SOURCE, job_id, exc)
            return None

    def open(self, target: Any, cursor: str | None) -> Reader:
        if not isinstance(target, TaskLogTarget):
            raise TypeError(f"{SOURCE} cannot read {type(target).__name__}")
        return TaskLogReader(target, self.config, self.context, self.client, cursor)


def _ended(info: JobInfo) -> JobInfo:
    return JobInfo(id=info.id, name=info.name, phase=info.phase, tasks=info.tasks, ended=True)


@hookimpl
def register_sources(register: Callable[[type[Source]], None]) -> None:
    register(TaskLogsSource)
