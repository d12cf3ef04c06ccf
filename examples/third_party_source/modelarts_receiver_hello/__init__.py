"""``hello_probe``: an example third-party source that checks URLs and logs each answer.

It stands on :mod:`collector_plugin.api` alone, as every source should: the context's HTTP client
brings rate limiting, retries and metrics; the receiver polls, exports, acknowledges and commits.
A record per poll and URL says how it answered; the cursor counts the probes, so a restart goes on
counting and a replay keeps its uids.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field

from collector_plugin import api

SOURCE_NAME = "hello_probe"
CODEC = api.CursorCodec(SOURCE_NAME)


class ProbeConfig(api.SourceConfig):
    urls: list[str] = Field(min_length=1, description="URLs to probe with GET, one target each.")


@dataclass(frozen=True)
class ProbeTarget:
    url: str
    active: bool = True

    @property
    def key(self) -> str:
        return f"{SOURCE_NAME}/{self.url}"


class ProbeReader:
    def __init__(self, source: ProbeSource, target: ProbeTarget, cursor: str | None) -> None:
        self.key = target.key
        self.status = api.ReaderStatus()
        self._source, self._url = source, target.url
        self._count = int(CODEC.loads(cursor).get("count", 0)) if cursor else 0

    async def poll(self, *, draining: bool = False) -> AsyncIterator[api.Span]:
        try:
            answer = await self._source.client.request("GET", self._url, endpoint=SOURCE_NAME)
            outcome, severity = f"HTTP {answer.status_code}", api.SEV_INFO
        except api.ReceiverError as err:
            outcome, severity = str(err), api.SEV_ERROR
        self._count += 1
        now = self._source.context.clock_ns()
        record = api.Record(
            body=f"{self._url}: {outcome}",
            uid=api.record_uid(SOURCE_NAME, self._url, self._count),
            observed_ns=now,
            time_ns=now,
            severity_number=severity,
            attributes={"probe.url": self._url, "probe.count": self._count},
            resource=self._source.resource,
        )
        yield api.Span(self.key, [record], CODEC.dumps({"count": self._count}))


class ProbeSource:
    name: ClassVar[str] = SOURCE_NAME
    description: ClassVar[str] = "Example: probe URLs, one record per answer (third-party plugin)"
    config_model: ClassVar[type[api.SourceConfig]] = ProbeConfig

    def __init__(self, config: ProbeConfig, context: api.SourceContext) -> None:
        assert context.http_client is not None
        self.config, self.context = config, context
        self.client = context.http_client(SOURCE_NAME, base_url="")
        self.resource = context.resource({"service.name": "hello-probe"})  # its own, nothing of ModelArts

    async def targets(self) -> Sequence[api.Target]:
        return [ProbeTarget(url) for url in self.config.urls]

    def open(self, target: Any, cursor: str | None) -> api.Reader:
        return ProbeReader(self, target, cursor)


@api.hookimpl
def register_sources(register: Callable[[type[api.Source]], None]) -> None:
    register(ProbeSource)
