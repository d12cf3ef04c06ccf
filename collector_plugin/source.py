"""The source contract: what a source plugin implements, and what the receiver hands it.

A source knows one endpoint family of one API. The scheduler asks it for its targets (from
config or discovery), opens one :class:`Reader` per target at the committed cursor, and polls
each reader on the source's interval. A reader yields :class:`~collector_plugin.records.Span`
objects; it never exports and never commits (the pipeline commits a span's cursor after its
records were acknowledged). Everything the scheduler learns from a reader is declared on
:class:`ReaderStatus`; nothing is found by ``getattr``.

Built-in sources implement exactly this, through :mod:`collector_plugin.api`; so does a third
party's (see examples/third_party_source).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from collector_plugin.durations import Duration
from collector_plugin.errors import ConfigError
from collector_plugin.journal import ReadJournal
from collector_plugin.records import Attributes, AttrValue, Record, Span

if TYPE_CHECKING:
    from collector_plugin.http import ApiClient

DEFAULT_REFRESH_INTERVAL = 60.0


class SourceConfig(BaseModel):
    """Keys every source accepts under ``sources.<name>``; sources subclass it with their own."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    poll_interval: Duration = Field(default=5.0, description="Seconds between polls of one target.")
    max_poll_interval: Duration = Field(default=60.0, description="An idle target backs off up to this interval.")
    start_at: Literal["beginning", "end"] = "end"
    on_bad_cursor: Literal["fail", "restart"] = Field(
        default="fail",
        description="A committed cursor the source cannot read: keep the target failed and visible, "
        "or read it again from start_at.",
    )

    @property
    def refresh_interval(self) -> float:
        """How often the scheduler asks the source for its targets (discovery may shorten it)."""
        return DEFAULT_REFRESH_INTERVAL


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


def target_revision(target: object) -> object:
    """A target's optional ``revision``: what its listing says of it (a service's status and update
    time). When a refresh lists a target with another revision than before, the scheduler polls
    it at once, ahead of idle targets: the listing showed news. Absent or None: never woken so."""
    return getattr(target, "revision", None)


@dataclass
class ReaderStatus:
    """What a reader tells the scheduler after each poll (all optional, defaults mean "nothing").

    ``behind``: the poll stopped early with more to read, poll again at once (no pause).
    ``transitional``: the target is in a state that changes soon (an update in progress, a job
    starting): keep polling at the base interval, never back off as if idle.
    ``lag_bytes`` / ``lag_seconds``: how far the reader trails the data it knows of.
    """

    behind: bool = False
    transitional: bool = False
    lag_bytes: int | None = None
    lag_seconds: float | None = None


class Reader(Protocol):
    """Reads one target from its cursor on; keeps in memory what lies beyond the cursor."""

    key: str
    status: ReaderStatus

    def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
        """Yield what is new since the last poll.

        ``draining`` means the target ended: read to its last byte and emit partial lines.
        """
        ...


class BadCursor(ValueError):
    """A committed cursor a reader cannot parse; the scheduler applies ``on_bad_cursor``."""


class HttpClientFactory(Protocol):
    """Builds a rate-limited, retrying, metered client for any HTTP API."""

    def __call__(
        self,
        name: str,
        *,
        base_url: str,
        auth: Any = None,
        retryable_codes: frozenset[str] = frozenset(),
        headers: Mapping[str, str] | None = None,
    ) -> ApiClient: ...


@dataclass(frozen=True)
class Connection:
    """An API connection the receiver configured (``modelarts:`` today): its client and settings.

    Sources of one API share it, so they share one rate limit and one set of retries.
    """

    client: ApiClient
    settings: Mapping[str, str] = field(default_factory=dict)


class SourceMetrics(Protocol):
    """The counters a source may bump beyond what the scheduler counts for it."""

    def gap(self) -> None:
        """Data the API no longer had (a gap record was emitted)."""

    def restart(self) -> None:
        """A log was restarted (it is read again from the start)."""

    def log_complete(self, complete: bool) -> None:
        """A log was drained; ``complete``: read to the size the API reports, without gaps."""


class _NoMetrics:
    def gap(self) -> None:
        return None

    def restart(self) -> None:
        return None

    def log_complete(self, complete: bool) -> None:
        return None


def _plain_resource(attrs: Mapping[str, AttrValue | None]) -> Attributes:
    return Attributes.of(attrs)


@dataclass
class SourceContext:
    """What the receiver hands a source: HTTP clients, connections, resource, clock, logger.

    Nothing here is tied to one API: ``connection(name)`` gives a connection the receiver built
    from its config, ``http_client(...)`` builds one for any other API, ``resource(attrs)`` turns
    the source's own resource attributes into the resource its records are sent under (merged
    with ``OTEL_RESOURCE_ATTRIBUTES`` and the ``resource:`` config); ``journal`` remembers when
    positions of a log were first read, so a replay after a crash stamps records identically.
    """

    source: str = ""
    connections: Mapping[str, Connection] = field(default_factory=dict)
    http_client: HttpClientFactory | None = None
    resource: Callable[[Mapping[str, AttrValue | None]], Attributes] = _plain_resource
    clock_ns: Callable[[], int] = time.time_ns
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("collector_plugin.source"))
    metrics: SourceMetrics = field(default_factory=_NoMetrics)
    journal: ReadJournal = field(default_factory=ReadJournal)

    def connection(self, name: str) -> Connection:
        """The connection ``name``; a clear error when the receiver has none of that name."""
        try:
            return self.connections[name]
        except KeyError:
            raise ConfigError(
                [f"{name}: required by source {self.source or '?'} (add a top-level '{name}:' section)"]
            ) from None


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
        """Return a reader for ``target`` that resumes after ``cursor`` (None: never read).

        Raise :class:`BadCursor` when ``cursor`` cannot be read.
        """
        ...


class Delivery(Protocol):
    """Spans on their way to the collector, as ``run`` sends them: committed once acknowledged."""

    def cursor(self, key: str) -> str | None:
        """The committed cursor of ``key`` (shared with ``run``), None if it never committed."""
        ...

    async def put(self, span: Span) -> None:
        """Queue a span (waits while the queue is full)."""
        ...

    async def flush(self, timeout: float) -> bool:
        """Wait until everything put was acknowledged and committed; False if ``timeout`` ran out."""
        ...


class CommandContext(Protocol):
    """What a plugin's CLI command gets: sources opened the way ``run`` opens them, and output."""

    def delivery(self) -> AbstractAsyncContextManager[Delivery]:
        """The configured exporter and checkpoint store, for a command that ships records."""
        ...

    def open_source(self, name: str, config: Mapping[str, Any]) -> Source:
        """The registered source ``name`` with ``config`` (validated as ``sources.<name>`` would be)."""
        ...

    def print_record(self, record: Record, *, verbose: bool = False) -> None:
        """Print a record as the console does (plain log lines, coloured details when verbose)."""
        ...


@dataclass(frozen=True)
class Command:
    """A CLI command a plugin contributes: ``modelarts-receiver <name> ...``.

    ``add_arguments`` declares its options (``--config`` is added for it); ``run`` does the work
    and returns the exit code.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, CommandContext], Awaitable[int]]


__all__ = [
    "BadCursor",
    "Command",
    "CommandContext",
    "Connection",
    "Delivery",
    "HttpClientFactory",
    "Reader",
    "ReaderStatus",
    "Source",
    "SourceConfig",
    "SourceContext",
    "SourceMetrics",
    "Target",
]
