"""``service_update_logs``: inference service update history, one record per state reached."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from collector_plugin.discovery import DiscoveryConfig
from collector_plugin.durations import Duration
from collector_plugin.hookspecs import hookimpl
from collector_plugin.source import Reader, Source, SourceConfig, SourceContext, Target


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)


class ServiceUpdatesConfig(SourceConfig):
    poll_interval: Duration = 30.0
    start_at: Literal["beginning", "end"] = "beginning"
    services: list[ServiceConfig] = Field(default_factory=list)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)


class ServiceUpdatesSource:
    name: ClassVar[str] = "service_update_logs"
    description: ClassVar[str] = "Inference service update results (v1 service logs API)"
    config_model: ClassVar[type[ServiceUpdatesConfig]] = ServiceUpdatesConfig

    def __init__(self, config: ServiceUpdatesConfig, context: SourceContext) -> None:
        self.config = config
        self.context = context

    async def targets(self) -> Sequence[Target]:
        raise NotImplementedError

    def open(self, target: Any, cursor: str | None) -> Reader:
        raise NotImplementedError


@hookimpl
def register_sources(register: Callable[[type[Source]], None]) -> None:
    register(ServiceUpdatesSource)
