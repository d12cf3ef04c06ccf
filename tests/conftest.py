"""Shared fixtures. Owned by H3 (delivery); ask the lead for additions.

- ``rotel_collector``: a real OTLP collector (rotel) on free loopback ports, detailed debug output
  parsed into records; ``.grpc_endpoint``, ``.http_endpoint``, ``.records(wait_for=n)``,
  ``.stop()``, ``.start()`` (same ports: the collector going down and coming back).
- ``memory_transport`` / ``memory_store``: in-memory transport and checkpoint store.
- ``metrics``: a fresh :class:`~collector_plugin.telemetry.Metrics` with its own registry.
- ``postgres_server``: one throwaway PostgreSQL server for the session (``tests/pg_harness.py``);
  ``.url(db)``, ``.socket_url(db)``, ``.create_database()``, ``.statements(application_name)``.
- ``make_pipeline``: builds a started :class:`~collector_plugin.export.Pipeline` with small, fast
  settings (override any keyword) and closes it at the end.
"""

from __future__ import annotations

import compileall
import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from collector_plugin.config import BatchConfig
from collector_plugin.export import Pipeline, Transport
from collector_plugin.telemetry import Metrics
from collector_plugin.testing import MemoryCheckpointStore, MemoryTransport

try:  # tests/ is a rootdir without __init__.py: pytest puts it on sys.path
    from pg_harness import PostgresServer
    from rotel_harness import RotelCollector
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests.pg_harness import PostgresServer
    from tests.rotel_harness import RotelCollector


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the package under test before any test starts a process that imports it.

    The suite starts ~80 interpreters that import ``collector_plugin`` (``cli run``, ``demo``,
    ``tail``, probes). An installed wheel comes with ``.pyc`` files; an editable install gets them
    from its first import, unless ``PYTHONDONTWRITEBYTECODE`` is set: then every one of those
    processes compiles the whole package again (~0.25 s each). Up-to-date files are skipped, and a
    changed source is recompiled (the default timestamp check), so this never runs stale code.
    """
    spec = importlib.util.find_spec("collector_plugin")
    for location in (spec and spec.submodule_search_locations) or []:
        compileall.compile_dir(location, quiet=1)


@pytest.fixture
def rotel_collector(tmp_path: Path) -> Iterator[RotelCollector]:
    collector = RotelCollector(tmp_path / "rotel")
    collector.start()
    try:
        yield collector
    finally:
        collector.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def memory_transport() -> MemoryTransport:
    return MemoryTransport()


@pytest.fixture
def memory_store() -> MemoryCheckpointStore:
    return MemoryCheckpointStore()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def make_pipeline(
    metrics: Metrics,
) -> AsyncIterator[Callable[..., Awaitable[Pipeline]]]:
    made: list[Pipeline] = []

    async def make(transport: Transport, store: Any, **overrides: Any) -> Pipeline:
        options: dict[str, Any] = {
            "batch": BatchConfig(max_records=50, max_bytes=64 * 1024, max_delay=0.02),
            "queue_size": 1000,
            "max_in_flight": 2,
            "retry_initial": 0.005,
            "retry_max": 0.02,
            "metrics": metrics,
            "scope_version": "test",
        }
        options.update(overrides)
        pipeline = Pipeline(transport, store, **options)
        await pipeline.start()
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        await pipeline.close(2.0)
