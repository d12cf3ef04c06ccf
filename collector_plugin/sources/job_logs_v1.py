"""``training_job_logs_v1``: old-API training job logs read in byte ranges of at most 2 KiB."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from collector_plugin.durations import Duration
from collector_plugin.hookspecs import hookimpl
from collector_plugin.lines import LineSourceConfig
from collector_plugin.source import Reader, Source, SourceContext, Target


class V1JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: int = Field(ge=0)
    version_id: int = Field(ge=0)
    log_files: list[str] = Field(default_factory=list, description="Empty: list them via .../log/file-names.")


class JobLogsV1Config(LineSourceConfig):
    jobs: list[V1JobConfig] = Field(default_factory=list)
    file_names_interval: Duration = Field(default=60.0, description="Seconds between file-name lookups.")


class JobLogsV1Source:
    name: ClassVar[str] = "training_job_logs_v1"
    description: ClassVar[str] = "Training job logs, old v1 API (2 KiB byte ranges)"
    config_model: ClassVar[type[JobLogsV1Config]] = JobLogsV1Config

    def __init__(self, config: JobLogsV1Config, context: SourceContext) -> None:
        self.config = config
        self.context = context

    async def targets(self) -> Sequence[Target]:
        raise NotImplementedError

    def open(self, target: Any, cursor: str | None) -> Reader:
        raise NotImplementedError


@hookimpl
def register_sources(register: Callable[[type[Source]], None]) -> None:
    register(JobLogsV1Source)
