"""What a source plugin implements, and what the receiver hands it.

A source knows one endpoint family. The scheduler asks it for its targets (from config or
discovery), opens one :class:`Reader` per target at the committed cursor, and polls each reader
on the source's interval. A reader yields :class:`~collector_plugin.records.Span` objects; it never
exports and never commits (the pipeline commits a span's cursor after its records were acked).

Built-in sources implement exactly this; so does a third party's (see examples/).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from collector_plugin.durations import Duration
from collector_plugin.records import Span

if TYPE_CHECKING:
    from collector_plugin.client import ModelArtsClient
    from collector_plugin.telemetry import Metrics


class SourceConfig(BaseModel):
    """Keys every source accepts under ``sources.<name>``; sources subclass it with their own."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    poll_interval: Duration = Field(default=5.0, description="Seconds between polls of one target.")
    max_poll_interval: Duration = Field(default=60.0, description="An idle target backs off up to this interval.")
    start_at: Literal["beginning", "end"] = "end"


@runtime_checkable
class Target(Protocol):
    """Something a source reads: a task's log, a job's events, a service's history."""

    @property
    def key(self) -> str:
        """Stable, unique checkpoint key, prefixed with the source name."""
        ...

    @property
    def active(self) -> bool:
        """False once the target ended: the scheduler drains its reader, then drops it."""
        ...


class Reader(Protocol):
    """Reads one target from its cursor on; keeps in memory what lies beyond the cursor.

    A reader that stopped a poll early with more to read may set an attribute ``behind = True``:
    the scheduler then polls it again at once instead of waiting for the interval.
    """

    key: str

    def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
        """Yield what is new since the last poll.

        ``draining`` means the target ended: read to its last byte and emit partial lines.
        """
        ...


@dataclass
class SourceContext:
    """What the receiver hands every source: the shared client, identity, clock and metrics."""

    client: ModelArtsClient
    project_id: str
    region: str = ""
    metrics: Metrics | None = None
    clock_ns: Callable[[], int] = time.time_ns
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("collector_plugin.source"))


class Source(Protocol):
    """A source plugin class. ``name`` is its key under ``sources:`` in the config."""

    name: ClassVar[str]
    description: ClassVar[str]
    config_model: ClassVar[type[SourceConfig]]

    def __init__(self, config: Any, context: SourceContext) -> None: ...

    async def targets(self) -> Sequence[Target]:
        """Return the targets to read now (from config, or discovered)."""
        ...

    def open(self, target: Any, cursor: str | None) -> Reader:
        """Return a reader for ``target`` that resumes after ``cursor`` (None: never read)."""
        ...


__all__ = ["Reader", "Source", "SourceConfig", "SourceContext", "Span", "Target"]
