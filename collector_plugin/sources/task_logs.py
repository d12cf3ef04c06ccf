"""``training_task_logs``: task logs via the preview API, and OBS links with Range for backlogs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from collector_plugin.discovery import DiscoveryConfig
from collector_plugin.hookspecs import hookimpl
from collector_plugin.lines import LineSourceConfig
from collector_plugin.source import Reader, Source, SourceContext, Target


class TaskJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    name: str | None = None
    tasks: list[str] = Field(default_factory=list, description="Empty: read every task of the job.")


class TaskLogsConfig(LineSourceConfig):
    jobs: list[TaskJobConfig] = Field(default_factory=list)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)


class TaskLogsSource:
    name: ClassVar[str] = "training_task_logs"
    description: ClassVar[str] = "Training task logs (v2 preview API, OBS links for backlogs)"
    config_model: ClassVar[type[TaskLogsConfig]] = TaskLogsConfig

    def __init__(self, config: TaskLogsConfig, context: SourceContext) -> None:
        self.config = config
        self.context = context

    async def targets(self) -> Sequence[Target]:
        raise NotImplementedError

    def open(self, target: Any, cursor: str | None) -> Reader:
        raise NotImplementedError


@hookimpl
def register_sources(register: Callable[[type[Source]], None]) -> None:
    register(TaskLogsSource)
