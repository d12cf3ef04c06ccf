"""A source context over a ModelArts client, as the receiver builds it for the ModelArts sources."""

from __future__ import annotations

from collections.abc import Callable

from collector_plugin.journal import ReadJournal
from collector_plugin.source import Connection, SourceContext
from collector_plugin.sources.modelarts.client import CONNECTION, ModelArtsClient
from collector_plugin.telemetry import Metrics
from collector_plugin.testing import source_context


def modelarts_context(
    client: ModelArtsClient,
    *,
    source: str = "",
    region: str = "",
    metrics: Metrics | None = None,
    clock_ns: Callable[[], int] | None = None,
    journal: ReadJournal | None = None,
) -> SourceContext:
    settings = {"project_id": client.project_id, "region": region}
    context = source_context(
        source, connections={CONNECTION: Connection(client.api, settings)}, metrics=metrics, clock_ns=clock_ns
    )
    if journal is not None:
        context.journal = journal
    return context
