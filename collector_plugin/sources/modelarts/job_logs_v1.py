"""``training_job_logs_v1``: old-API training job logs read in byte ranges of at most 2 KiB.

The v1 API answers a byte range as a JSON string, which cannot hold part of a character: where
a range cuts one, the server drops it or replaces it with U+FFFD. A reader always starts a range
at a character boundary, so only the range's end is uncertain; it keeps the characters known
complete, advances by their UTF-8 length and asks again from the first uncertain byte. No
character is lost or mangled, and byte offsets stay exact (for logs that are valid UTF-8: the
API cannot express other bytes).

An idle poll costs one request: ``start_byte=-1`` answers the last 2 KiB and the file size, which
tells whether the log grew, or restarted shorter; small growth is taken from that same answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from collector_plugin.api import (
    ApiError,
    Duration,
    LineSourceConfig,
    Reader,
    ResponseFormatError,
    Source,
    SourceConfig,
    SourceContext,
    Span,
    Target,
    hookimpl,
)
from collector_plugin.sources.modelarts import discovery, endpoints
from collector_plugin.sources.modelarts.client import (
    SERVICE_TRAINING,
    ModelArtsClient,
    StreamsConfig,
    modelarts_client,
    stream_resource,
)
from collector_plugin.sources.modelarts.log_reader import ByteLogReader
from collector_plugin.sources.modelarts.records import v1_log_attributes

SOURCE = "training_job_logs_v1"
MAX_RANGE = 2048  # the API's limit per call
SPAN_BYTES = 64 * 1024  # a catching-up reader yields a span (a commit point) this often
MAX_CALLS_PER_POLL = 256  # 512 KiB a poll; a reader still behind asks to be polled again at once
_REPLACEMENT = "\ufffd".encode()


class V1JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: int = Field(ge=0)
    version_id: int = Field(ge=0)
    log_files: list[str] = Field(default_factory=list, description="Empty: list them via .../log/file-names.")


class JobLogsV1Config(StreamsConfig, LineSourceConfig):
    jobs: list[V1JobConfig] = Field(default_factory=list)
    file_names_interval: Duration = Field(default=60.0, description="Seconds between file-name lookups.")


class V1LogResponse(BaseModel):
    """One range. Numbers may be strings; ``count`` may stand for ``log_byte_count``."""

    model_config = ConfigDict(extra="ignore")

    is_success: bool = True
    log: str = ""
    log_byte_count: int | None = Field(default=None, ge=0, validation_alias=AliasChoices("log_byte_count", "count"))
    end_byte: int | None = Field(default=None, ge=0)
    error_code: str | None = None
    error_msg: str | None = None

    @field_validator("log", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    def raw_count(self, text: bytes) -> int:
        """Bytes the range covered on the server (what the text came from)."""
        return self.log_byte_count if self.log_byte_count is not None else len(text)


def complete_prefix(resp: V1LogResponse, requested: int, *, final: bool = False) -> bytes:
    """The bytes of the range's characters known complete (the range starts on a boundary).

    A trailing U+FFFD may stand for a character the range cut, or one the writer has not
    finished; it is kept only when the log ended (``final``), the range was short (the end of
    the log) and the text is exactly as long as the range.
    """
    text = resp.log.encode("utf-8")
    count = resp.raw_count(text)
    if text.endswith(_REPLACEMENT) and not (final and count < requested and len(text) == count):
        text = text[: -len(_REPLACEMENT)]
    return text[:count]


def exact_bytes(resp: V1LogResponse) -> bytes | None:
    """The range's bytes when the text is provably unaltered (same length, nothing replaced)."""
    text = resp.log.encode("utf-8")
    if resp.log_byte_count is None or len(text) != resp.log_byte_count or _REPLACEMENT in text:
        return None
    return text


@dataclass(frozen=True)
class V1LogTarget:
    """One log file of one job version; v1 jobs are never reported ended."""

    job_id: int
    version_id: int
    file_name: str
    active: bool = True

    @property
    def key(self) -> str:
        return f"{SOURCE}/{self.job_id}/{self.version_id}/{self.file_name}"


class V1LogReader(ByteLogReader):
    """Reads one v1 log file from its cursor on (see the module docstring)."""

    def __init__(
        self,
        target: V1LogTarget,
        config: JobLogsV1Config,
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
            shared=v1_log_attributes(target.job_id, target.version_id, target.file_name),
            resource=stream_resource(
                context, config, SERVICE_TRAINING, f"{target.job_id}/{target.version_id}/{target.file_name}"
            ),
            cursor=cursor,
            ended=not target.active,
        )
        self._client = client
        self._path = client.path(endpoints.V1_LOG, job_id=target.job_id, version_id=target.version_id)
        self._file = target.file_name

    async def _get(self, start: int, length: int = MAX_RANGE) -> V1LogResponse:
        resp = await self._client.get_model(
            self._path,
            V1LogResponse,
            endpoint=endpoints.V1_LOG,
            params={"log_file": self._file, "start_byte": start, "offset": length},
        )
        if not resp.is_success:
            raise ApiError(
                endpoint=endpoints.V1_LOG, status=200, error_code=resp.error_code or "", error_msg=resp.error_msg or ""
            )
        return resp

    async def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
        self.begin_poll(draining=draining)
        last = await self._get(-1)
        size = last.end_byte
        tail = exact_bytes(last)
        if self.assembler is None:
            if self.resume is not None:
                self.resume_at_cursor(self.resume)
            else:
                self.start(self.first_offset(size, tail))
                yield self.empty_span()
        rewritten = size is not None and tail is not None and self.rewritten(tail, size - len(tail))
        if size is not None and (size < self.position or rewritten):
            yield self.restarted(size)
        if size is not None:
            self.lag(size)
        pos = self.position
        if size is None or size > pos:
            tail_start = size - len(tail) if size is not None and tail is not None else None
            if tail is not None and tail_start is not None and tail_start <= pos:
                for span in self.spans(tail[pos - tail_start :], pos):
                    yield span
            else:
                async for span in self._read_ranges(pos, size, final=draining):
                    yield span
        flushed = self.flush_span(draining=draining)
        if flushed is not None:
            yield flushed
        if size is not None:
            self.lag(size)
        if (completed := self.complete_span(size, draining=draining)) is not None:
            yield completed

    async def _read_ranges(self, pos: int, size: int | None, *, final: bool) -> AsyncIterator[Span]:
        """Read ranges from ``pos`` to ``size`` (unknown: while they come back full); a span per ~64 KiB.

        At most :data:`MAX_CALLS_PER_POLL` calls, then ``behind`` tells the scheduler to poll again
        at once: one poll never runs unbounded, whatever size the server claims.
        """
        buf = bytearray()
        buf_start = pos
        self.status.behind = False
        for _ in range(MAX_CALLS_PER_POLL):
            resp = await self._get(pos)
            data = complete_prefix(resp, MAX_RANGE, final=final)
            buf += data
            pos += len(data)
            if len(buf) >= SPAN_BYTES:
                for span in self.spans(bytes(buf), buf_start):
                    yield span
                buf_start = pos
                buf.clear()
                if size is not None:
                    self.lag(size)
            short = resp.raw_count(resp.log.encode("utf-8")) < MAX_RANGE
            if short or not data or (size is not None and pos >= size):
                break
        else:
            self.status.behind = True
        if buf:
            for span in self.spans(bytes(buf), buf_start):
                yield span


class JobLogsV1Source:
    name: ClassVar[str] = SOURCE
    description: ClassVar[str] = "Training job logs, old v1 API (2 KiB byte ranges)"
    config_model: ClassVar[type[SourceConfig]] = JobLogsV1Config

    def __init__(self, config: JobLogsV1Config, context: SourceContext) -> None:
        self.config = config
        self.context = context
        self.client = modelarts_client(context)
        self._files: dict[tuple[int, int], tuple[int, list[str]]] = {}

    async def targets(self) -> Sequence[Target]:
        """Every configured file, or every file the job version lists (looked up periodically)."""
        out: list[V1LogTarget] = []
        for job in self.config.jobs:
            files = job.log_files or await self._file_names(job.job_id, job.version_id)
            out += [V1LogTarget(job.job_id, job.version_id, name) for name in files]
        return out

    async def _file_names(self, job_id: int, version_id: int) -> list[str]:
        now = self.context.clock_ns()
        cached = self._files.get((job_id, version_id))
        if cached is not None and now - cached[0] < self.config.file_names_interval * 1e9:
            return cached[1]
        try:
            names = await discovery.v1_log_file_names(self.client, job_id, version_id)
        except (ApiError, ResponseFormatError) as exc:
            self.context.logger.warning("%s: cannot list the log files of job %s: %s", SOURCE, job_id, exc)
            return cached[1] if cached else []
        self._files[(job_id, version_id)] = (now, names)
        return names

    def open(self, target: Any, cursor: str | None) -> Reader:
        if not isinstance(target, V1LogTarget):
            raise TypeError(f"{SOURCE} cannot read {type(target).__name__}")
        return V1LogReader(target, self.config, self.context, self.client, cursor)


@hookimpl
def register_sources(register: Callable[[type[Source]], None]) -> None:
    register(JobLogsV1Source)
