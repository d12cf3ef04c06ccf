"""``service_update_logs``: inference service update history, one record per state reached.

The API returns a service's whole update history every time, without ids. An update is known
by its ``update_time`` (and its position among updates that share it); the cursor remembers the
last result emitted for each recent update, so an update yields one record as ``RUNNING`` and
one more when it turns ``SUCCESS`` or ``FAIL``, and nothing while it stays unchanged.
``envs`` values may hold secrets: they are redacted by the mapping and never logged here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from collector_plugin.api import (
    CursorCodec,
    Duration,
    Reader,
    ReaderStatus,
    Record,
    Source,
    SourceConfig,
    SourceContext,
    Span,
    Target,
    hookimpl,
)
from collector_plugin.sources.modelarts import endpoints
from collector_plugin.sources.modelarts.client import (
    SERVICE_INFERENCE,
    StreamsConfig,
    modelarts_client,
    stream_resource,
)
from collector_plugin.sources.modelarts.discovery import Discoverable, DiscoveryConfig, list_services
from collector_plugin.sources.modelarts.records import SERVICE_UPDATES_SOURCE, service_update_record

SOURCE_NAME = SERVICE_UPDATES_SOURCE
EP_SERVICE_LOGS = endpoints.SERVICE_LOGS
MAX_UPDATES = 500  # updates remembered in a cursor; older ones count as emitted
CODEC = CursorCodec(SOURCE_NAME, version=1)
IN_PROGRESS = frozenset({"RUNNING"})  # the documented results: SUCCESS, FAIL, RUNNING
_NUMERIC_CONFIG_KEYS = ("weight", "instance_count")


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)


class ServiceDiscoveryConfig(DiscoveryConfig):
    interval: Duration = Field(
        default=15.0,
        description="How often the service list is refreshed: one call per 1,000 services, and a "
        "service whose status or update time changed there is polled at once.",
    )


class ServiceUpdatesConfig(Discoverable, StreamsConfig):
    poll_interval: Duration = 30.0
    start_at: Literal["beginning", "end"] = "beginning"
    services: list[ServiceConfig] = Field(default_factory=list)
    discovery: ServiceDiscoveryConfig = Field(default_factory=ServiceDiscoveryConfig)


class _Update(BaseModel):
    model_config = ConfigDict(extra="ignore")

    update_time: int = Field(ge=0, le=(2**64 - 1) // 1_000_000)  # an OTLP timestamp must hold it
    result: str = ""
    config: list[dict[str, Any]] | None = None
    success_num: int | None = None
    failed_num: int | None = None
    result_detail: list[dict[str, Any]] | None = None


class _ServiceLogs(BaseModel):
    model_config = ConfigDict(extra="ignore")

    service_id: str | None = None
    service_name: str | None = None
    logs: list[_Update] | None = None


def _numbers(config: dict[str, Any]) -> dict[str, Any]:
    """``"70"`` -> ``70`` for the numeric fields some servers send as strings."""
    out = dict(config)
    for key in _NUMERIC_CONFIG_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


UpdateKey = tuple[int, int]


@dataclass
class UpdateTracker:
    """The last result emitted per update, bounded to the ``max_updates`` most recent ones.

    Pure: :meth:`changes` takes the history as the API returned it and returns the updates whose
    result is new, marking them emitted. Updates older than ``floor`` count as already emitted.
    """

    results: dict[UpdateKey, str]
    floor: UpdateKey = (0, 0)
    max_updates: int = MAX_UPDATES

    @classmethod
    def from_cursor(cls, cursor: str | None, max_updates: int = MAX_UPDATES) -> UpdateTracker:
        if cursor is None:
            return cls({}, max_updates=max_updates)
        data = CODEC.loads(cursor)
        try:
            results = {}
            for key, result in data["seen"].items():
                time_ms, _, pos = key.partition(":")
                results[(int(time_ms), int(pos or 0))] = str(result)
            floor = (int(data["floor"][0]), int(data["floor"][1]))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            raise CODEC.fail(type(err).__name__) from None
        return cls(results, floor, max_updates)

    def cursor(self) -> str:
        seen = {f"{t}:{p}": r for (t, p), r in sorted(self.results.items())}
        return CODEC.dumps({"floor": list(self.floor), "seen": seen})

    @property
    def in_progress(self) -> bool:
        """Whether the latest update has not reached a final state (RUNNING): news is near."""
        if not self.results:
            return False
        return self.results[max(self.results)] in IN_PROGRESS

    def changes(self, updates: Sequence[_Update]) -> list[tuple[int, _Update]]:
        """(position, update) for each update that is new or whose result changed, oldest first."""
        out = []
        for key, update in _positioned(updates):
            if key < self.floor:
                continue
            result = update.result.strip().upper()
            if self.results.get(key) != result:
                self.results[key] = result
                out.append((key[1], update))
        self._bound()
        return out

    def _bound(self) -> None:
        if len(self.results) <= self.max_updates:
            return
        keys = sorted(self.results)
        for key in keys[: len(keys) - self.max_updates]:
            del self.results[key]
        self.floor = max(self.floor, min(self.results))


def _positioned(updates: Sequence[_Update]) -> list[tuple[UpdateKey, _Update]]:
    """Sort by time (stable: server order among equal times) and number updates sharing a time."""
    out = []
    previous: int | None = None
    position = 0
    for update in sorted(updates, key=lambda u: u.update_time):
        position = position + 1 if update.update_time == previous else 0
        previous = update.update_time
        out.append(((update.update_time, position), update))
    return out


@dataclass(frozen=True)
class ServiceTarget:
    """One service; ``revision``: its status and update time as the service listing shows them
    (a change there, such as ``deploying``, has the scheduler poll the history at once)."""

    service_id: str
    service_name: str | None = None
    active: bool = True
    revision: str | None = None

    @property
    def key(self) -> str:
        return f"{SOURCE_NAME}/{self.service_id}"


class ServiceUpdatesReader:
    """Reads one service's update history; one span per poll that finds a change."""

    def __init__(self, source: ServiceUpdatesSource, target: ServiceTarget, cursor: str | None) -> None:
        self.key = target.key
        self.status = ReaderStatus()
        self._source = source
        self._target = target
        self._tracker = UpdateTracker.from_cursor(cursor)
        self._emit = cursor is not None or source.config.start_at == "beginning"
        self._last_cursor = cursor
        self._path = source.client.path(EP_SERVICE_LOGS, service_id=target.service_id)
        self._resource = stream_resource(source.context, source.config, SERVICE_INFERENCE, target.service_id)
        self._times = source.context.journal.open(target.key, self._tracker.floor[0] * 2)

    async def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
        ctx = self._source.context
        answer = await self._source.client.get_model(self._path, _ServiceLogs, endpoint=EP_SERVICE_LOGS)
        observed = ctx.clock_ns()
        name = answer.service_name or self._target.service_name or ""
        changed = self._tracker.changes(answer.logs or [])
        records = [self._record(pos, u, name, self._observed(u, observed)) for pos, u in changed] if self._emit else []
        self._emit = True
        self.status.transitional = self._tracker.in_progress
        cursor = self._tracker.cursor()
        if records or cursor != self._last_cursor:
            self._last_cursor = cursor
            yield Span(target=self.key, records=records, cursor=cursor, nbytes=0)

    def _observed(self, update: _Update, now: int) -> int:
        """When this state of the update was first read (journaled: a replay observes it alike)."""
        position = update.update_time * 2 + (update.result.strip().upper() not in IN_PROGRESS)
        self._times.stamp(position, position + 1, now)
        return self._times.at(position, now)

    def _record(self, position: int, update: _Update, service_name: str, observed_ns: int) -> Record:
        return service_update_record(
            project_id=self._source.client.project_id,
            service_id=self._target.service_id,
            service_name=service_name,
            update_time_ms=update.update_time,
            result=update.result,
            config=[_numbers(c) for c in update.config or ()],
            success_num=update.success_num,
            failed_num=update.failed_num,
            result_detail=update.result_detail,
            observed_ns=observed_ns,
            position=position,
            resource=self._resource,
        )


class ServiceUpdatesSource:
    name: ClassVar[str] = SOURCE_NAME
    description: ClassVar[str] = "Inference service update results (v1 service logs API)"
    config_model: ClassVar[type[SourceConfig]] = ServiceUpdatesConfig

    def __init__(self, config: ServiceUpdatesConfig, context: SourceContext) -> None:
        self.config = config
        self.context = context
        self.client = modelarts_client(context)
        self._discovered: dict[str, ServiceTarget] = {}

    async def targets(self) -> Sequence[Target]:
        """Configured services and discovered ones; a service no longer listed is returned once, inactive."""
        found: dict[str, ServiceTarget] = {}
        for svc in self.config.services:
            target = ServiceTarget(svc.id)
            found[target.key] = target
        if self.config.discovery.enabled:  # a configured service that is also listed: the listing's, with its revision
            current = {}
            for info in await list_services(self.client, self.config.discovery):
                target = ServiceTarget(info.id, info.name or None, revision=f"{info.status}@{info.update_time}")
                current[target.key] = target
            gone = {k: ServiceTarget(t.service_id, t.service_name, active=False) for k, t in self._discovered.items()}
            self._discovered = dict(current)
            for key, target in {**gone, **current}.items():
                if key not in found or target.active:
                    found[key] = target
        return list(found.values())

    def open(self, target: Any, cursor: str | None) -> Reader:
        if not isinstance(target, ServiceTarget):
            raise TypeError(f"{SOURCE_NAME} cannot read {type(target).__name__}")
        return ServiceUpdatesReader(self, target, cursor)


@hookimpl
def register_sources(register: Callable[[type[Source]], None]) -> None:
    register(ServiceUpdatesSource)


__all__ = ["ServiceTarget", "ServiceUpdatesConfig", "ServiceUpdatesReader", "ServiceUpdatesSource", "UpdateTracker"]
