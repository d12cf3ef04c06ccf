"""``hello_heartbeat``: an example third-party source, one record per poll with a counter cursor.

A plugin module implements ``register_sources`` and is exposed through the ``collector_plugin``
entry point group (see this package's pyproject.toml). Sources never export or commit: they
yield spans, and the receiver commits a span's cursor once its records were acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field

from collector_plugin.hookspecs import hookimpl
from collector_plugin.mapping import SEV_INFO, record_uid
from collector_plugin.records import Attributes, Record, Span
from collector_plugin.source import Reader, Source, SourceConfig, SourceContext, Target

SOURCE_NAME = "hello_heartbeat"


class HelloConfig(SourceConfig):
    message: str = "hello"
    names: list[str] = Field(default_factory=lambda: ["default"], min_length=1)


@dataclass(frozen=True)
class HelloTarget:
    name: str
    active: bool = True

    @property
    def key(self) -> str:
        return f"{SOURCE_NAME}/{self.name}"


class HelloReader:
    def __init__(self, source: HelloSource, target: HelloTarget, cursor: str | None) -> None:
        self.key = target.key
        self._source = source
        self._shared = Attributes([("hello.name", target.name)])
        self._count = int(json.loads(cursor)["count"]) if cursor else 0

    async def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
        ctx = self._source.context
        self._count += 1
        now = ctx.clock_ns()
        record = Record(
            body=f"{self._source.config.message} #{self._count}",
            uid=record_uid(ctx.project_id, SOURCE_NAME, self.key, self._count),
            observed_ns=now,
            time_ns=now,
            severity_number=SEV_INFO,
            severity_text="INFO",
            shared=self._shared,
            attributes={"hello.count": self._count},
        )
        yield Span(target=self.key, records=[record], cursor=json.dumps({"count": self._count}))


class HelloSource:
    name: ClassVar[str] = SOURCE_NAME
    description: ClassVar[str] = "Example: one heartbeat record per poll (third-party plugin)"
    config_model: ClassVar[type[SourceConfig]] = HelloConfig

    def __init__(self, config: HelloConfig, context: SourceContext) -> None:
        self.config = config
        self.context = context

    async def targets(self) -> Sequence[Target]:
        return [HelloTarget(name) for name in self.config.names]

    def open(self, target: Any, cursor: str | None) -> Reader:
        return HelloReader(self, target, cursor)


@hookimpl
def register_sources(register: Callable[[type[Source]], None]) -> None:
    register(HelloSource)
