"""The public source API is the only thing a source imports, and the scheduler keeps its promises."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from collector_plugin import api
from collector_plugin.records import Record, Span
from collector_plugin.scheduler import Scheduler, SourceRuntime
from collector_plugin.telemetry import Metrics

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "collector_plugin" / "sources"
EXAMPLE = ROOT / "examples" / "third_party_source" / "modelarts_receiver_hello"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "collector_plugin":
            found.update(f"collector_plugin.{alias.name}" for alias in node.names)  # from collector_plugin import x
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module if node.level == 0 else "." * node.level + node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("path", sorted(SOURCES.rglob("*.py")) + sorted(EXAMPLE.rglob("*.py")), ids=str)
def test_sources_import_only_the_api_and_their_own_package(path: Path) -> None:
    own = "collector_plugin.sources." + path.relative_to(SOURCES).parts[0] if SOURCES in path.parents else ""
    for module in _imports(path):
        if not module.startswith("collector_plugin"):
            continue
        allowed = module == "collector_plugin.api" or (bool(own) and (module == own or module.startswith(own + ".")))
        assert allowed, f"{path.relative_to(ROOT)} imports {module}: sources may import collector_plugin.api only"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from collector_plugin.client import X\nfrom collector_plugin import mapping\n")
    assert {"collector_plugin.client", "collector_plugin.mapping"} <= _imports(bad)


def test_the_api_exports_what_it_names() -> None:
    for name in api.__all__:
        assert hasattr(api, name), name


# --- scheduler duties every source gets without writing them ---------------------------------


@dataclass(frozen=True)
class T:
    key: str
    active: bool = True


@dataclass
class CountingReader:
    key: str
    status: api.ReaderStatus = field(default_factory=api.ReaderStatus)

    async def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
        self.status.lag_bytes = 7
        yield Span(self.key, [Record(body="x", uid=self.key, observed_ns=0)] * 2, cursor="c", nbytes=10)


@dataclass
class PickySource:
    """Opens one target only from a readable cursor; the other yields two records of 10 bytes."""

    name: ClassVar[str] = "picky"
    description: ClassVar[str] = "test"
    config_model: ClassVar[type[api.SourceConfig]] = api.SourceConfig
    opened: list[tuple[str, str | None]] = field(default_factory=list)

    async def targets(self) -> Sequence[api.Target]:
        return [T("picky/good"), T("picky/bad")]

    def open(self, target: Any, cursor: str | None) -> api.Reader:
        self.opened.append((target.key, cursor))
        if cursor == "garbage":
            raise api.BadCursor("picky: unreadable cursor (offset)")
        return CountingReader(target.key)


class Sink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    async def put(self, span: Span) -> None:
        self.spans.append(span)


async def _run(on_bad_cursor: str, until: Any) -> tuple[Scheduler, PickySource, Metrics, Sink]:
    source = PickySource()
    metrics = Metrics()
    config = api.SourceConfig(poll_interval=0.01, max_poll_interval=0.02, on_bad_cursor=on_bad_cursor)  # type: ignore[arg-type]
    sink = Sink()
    scheduler = Scheduler(
        [SourceRuntime("picky", source, config)], sink, {"picky/bad": "garbage"}, metrics, jitter=False
    )  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    for _ in range(2000):
        if until(scheduler, source, sink):
            break
        await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(task, 10)
    return scheduler, source, metrics, sink


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value("modelarts_receiver_" + name, labels)


async def test_an_unreadable_cursor_fails_the_target_visibly_and_is_counted() -> None:
    def settled(s: Scheduler, src: PickySource, sink: Sink) -> bool:
        return len(sink.spans) >= 2 and bool(
            s.targets("picky").get("picky/bad", None) and s.targets("picky")["picky/bad"].failed
        )

    scheduler, source, metrics, _ = await _run("fail", settled)
    bad = scheduler.targets("picky")["picky/bad"]
    assert "unreadable cursor" in bad.failed
    assert source.opened.count(("picky/bad", "garbage")) == 1  # not reopened in a loop
    assert ("picky/bad", None) not in source.opened  # never silently restarted
    assert _sample(metrics, "target_errors_total", source="picky", error="BadCursor") == 1
    assert _sample(metrics, "targets_active", source="picky") == 1
    assert _sample(metrics, "targets_discovered", source="picky") == 2


async def test_on_bad_cursor_restart_reads_the_target_again_from_start_at() -> None:
    def settled(s: Scheduler, src: PickySource, sink: Sink) -> bool:
        return any(span.target == "picky/bad" for span in sink.spans)

    scheduler, source, metrics, _ = await _run("restart", settled)
    assert ("picky/bad", None) in source.opened
    assert not scheduler.targets("picky")["picky/bad"].failed
    assert _sample(metrics, "target_errors_total", source="picky", error="BadCursor") == 1


async def test_the_scheduler_counts_records_bytes_and_lag_per_source_and_target() -> None:
    def settled(s: Scheduler, src: PickySource, sink: Sink) -> bool:
        return sum(span.target == "picky/good" for span in sink.spans) >= 3

    scheduler, _, metrics, sink = await _run("fail", settled)
    good = [span for span in sink.spans if span.target == "picky/good"]
    state = scheduler.targets("picky")["picky/good"]
    assert state.records == 2 * len(good) and state.bytes == 10 * len(good)
    assert _sample(metrics, "records_read_total", source="picky") == 2 * len(good)
    assert _sample(metrics, "bytes_read_total", source="picky") == 10 * len(good)
    assert _sample(metrics, "target_lag_bytes", source="picky", target="picky/good") == 7
