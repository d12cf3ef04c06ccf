"""Bounded on every axis: ``python tests/benchmarks/bench_bounded.py [--newline-mib N] [--json FILE]``.

The four axes of ``tests/test_bounded.py`` at full size, against the in-process simulator, poll
by poll: API requests, answer bytes, records, spans, the most records in a span, the largest
record body, the peak of ``tracemalloc`` during the poll, and the CPU time of the thread that
runs the reader (the simulator answers from its own threads, so its CPU is not in it; its
memory is in the peak, since it builds whole answers in memory). Each axis runs twice: traced
for the peak, untraced for the CPU time (``tracemalloc`` slows allocation several times).

- huge lines: 8 MiB of 1 MiB lines read from the beginning (3 MiB through OBS, 5 through the preview)
- newlines: ``--newline-mib`` (2) MiB of bare LFs, the first MiB through OBS, the rest via the preview
- one-line preview: a 5,000,000-byte line without LF in the preview; then idle; then flushed
- events: 10,000 events in the lookback window of one job; then idle; then 100 more arrive
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from collector_plugin.simulator import Simulator
from collector_plugin.simulator.scenario import now_ms
from collector_plugin.sources.modelarts.client import ModelArtsClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_bounded import FAST_RETRY, EventLog, MiB, PollStats, events_reader, huge_lines, log_case, measure

Polls = list[tuple[str, PollStats]]


async def backlog_then_idle(data: bytes, trace: bool, **options: Any) -> Polls:
    """A log holding ``data`` read from the beginning: its backlog poll, then an idle one."""
    sims: list[Simulator] = []
    case = await log_case(sims, data, **options)
    try:
        async with case.client:
            return [
                ("backlog", await measure(case.reader, case.sim, trace=trace)),
                ("idle", await measure(case.reader, case.sim, trace=trace)),
            ]
    finally:
        sims[0].stop()


async def huge(trace: bool, _: argparse.Namespace) -> Polls:
    return await backlog_then_idle(huge_lines(8 * MiB, MiB), trace)


async def newlines(trace: bool, args: argparse.Namespace) -> Polls:
    size = int(args.newline_mib * MiB)
    return await backlog_then_idle(b"\n" * size, trace, preview_cap=size - MiB)


async def one_line(trace: bool, _: argparse.Namespace) -> Polls:
    sims: list[Simulator] = []
    case = await log_case(sims, huge_lines(5_000_001, 5_000_001)[:-1], start_at="end")  # read through the preview
    try:
        async with case.client:
            polls = [("5 MB preview", await measure(case.reader, case.sim, trace=trace))]
            polls.append(("idle", await measure(case.reader, case.sim, trace=trace)))
            case.clock.advance(5.1)
            polls.append(("flush_after", await measure(case.reader, case.sim, trace=trace)))
            return polls
    finally:
        sims[0].stop()


async def events(trace: bool, _: argparse.Namespace) -> Polls:
    sim = Simulator(require_auth=False).start()
    try:
        async with ModelArtsClient.connect(
            sim.url, sim.project_id, retry=FAST_RETRY, rate_limit=10_000, burst=10_000
        ) as client:
            job = sim.scenario.add_job()
            base = now_ms() - 260_000
            for i in range(10_000):
                job.add_event(f"event {i}", time_ms=base + i * 25)
            reader = events_reader(client, job.id)
            log = EventLog()
            polls = [("first (10,000)", await measure(reader, sim, log.add, trace=trace))]
            polls.append(("settle", await measure(reader, sim, log.add, trace=trace)))
            polls.append(("idle", await measure(reader, sim, log.add, trace=trace)))
            for i in range(100):
                job.add_event(f"more {i}", time_ms=base + 250_000 + i * 10)
            polls.append(("100 new", await measure(reader, sim, log.add, trace=trace)))
            polls.append(("after", await measure(reader, sim, log.add, trace=trace)))
            polls.append(("idle", await measure(reader, sim, log.add, trace=trace)))
            return polls
    finally:
        sim.stop()


AXES: dict[str, Callable[[bool, argparse.Namespace], Awaitable[Polls]]] = {
    "huge lines (8 MiB of 1 MiB lines)": huge,
    "newlines": newlines,
    "one-line 5 MB preview": one_line,
    "events (10,000 in lookback)": events,
}


def row(axis: str, label: str, traced: PollStats, untraced: PollStats) -> str:
    cells = [
        axis,
        label,
        str(traced.total_requests),
        f"{traced.fetched:,}",
        f"{traced.records:,}",
        str(traced.spans),
        f"{traced.max_span_records:,}",
        f"{traced.max_body_bytes:,}",
        f"{traced.peak_bytes / MiB:.1f}",
        f"{untraced.cpu_s * 1000:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--newline-mib", type=float, default=2.0, help="MiB of bare LFs (at least 1.25)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    header = "| axis | poll | requests | answer bytes | records | spans | max records/span | max body bytes | peak MiB | CPU ms |"
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    figures: dict[str, list[dict[str, object]]] = {}
    for axis, run in AXES.items():
        untraced = asyncio.run(run(False, args))
        traced = asyncio.run(run(True, args))
        for (label, t), (_, u) in zip(traced, untraced, strict=True):
            print(row(axis, label, t, u), flush=True)
            traced_figures = {**asdict(t), "requests": dict(t.requests)}  # asdict rebuilds a Counter wrongly
            figures.setdefault(axis, []).append({"poll": label, "traced": traced_figures, "cpu_s": u.cpu_s})
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
