"""``training_job_events``: training job events with level and source, exactly once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from collector_plugin.discovery import DiscoveryConfig
from collector_plugin.durations import Duration
from collector_plugin.hookspecs import hookimpl
from collector_plugin.source import Reader, Source, SourceConfig, SourceContext, Target


class EventJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    name: str | None = None


class EventsConfig(SourceConfig):
    poll_interval: Duration = 10.0
    start_at: Literal["beginning", "end"] = "beginning"
    jobs: list[EventJobConfig] = Field(default_factory=list)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    page_size: int = Field(default=100, ge=1, le=100)
    lookback: Duration = Field(default=300.0, ge=0, description="Seconds re-scanned for events that appear late.")


class EventsSource:
    name: ClassVar[str] = "training_job_events"
    description: ClassVar[str] = "Training job events (v2 events API)"
    config_model: ClassVar[type[EventsConfig]] = EventsConfig

    def __init__(self, config: EventsConfig, context: SourceContext) -> None:
        self.config = config
        self.context = context

    async def targets(self) -> Sequence[Target]:
        raise NotImplementedError

    def open(self, target: Any, cursor: str | None) -> Reader:
        raise NotImplementedError


@hookimpl
def register_sources(register: Callable[[type[Source]], None]) -> None:
    register(EventsSource)
