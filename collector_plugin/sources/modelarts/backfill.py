"""``modelarts-receiver backfill JOB``: ship a training job's whole log once, with a progress bar.

A CLI command the ModelArts plugin contributes. It reads every task log of the job from the
beginning (or from its committed cursor: a backfill stopped half way resumes, and ``run`` does not
send again what it shipped, since both share the checkpoint store and the read-time journal),
sends through the configured exporter and exits 0 once everything was acknowledged.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from collector_plugin.api import Command, CommandContext, Delivery, Reader, Target, hookimpl
from collector_plugin.sources.modelarts.task_logs import SOURCE as TASK_LOGS

EXIT_UNSENT = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="training job id")
    p.add_argument("--task", action="append", help="task name, e.g. worker-0 (repeatable; default: every task)")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the last acknowledgements (default: 300)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown on a terminal)")


async def run(args: argparse.Namespace, ctx: CommandContext) -> int:
    async with ctx.delivery() as out:
        source = ctx.open_source(
            TASK_LOGS,
            {"start_at": "beginning", "flush_after": "0s", "jobs": [{"id": args.job, "tasks": args.task or []}]},
        )
        targets = list(await source.targets())
        if not targets:
            print(f"error: training job {args.job} has no task logs to backfill", file=sys.stderr)
            return 1
        bar = tqdm(
            total=0,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"backfill {args.job}",
            disable=args.no_progress or not sys.stderr.isatty(),
            file=sys.stderr,
        )
        lines = 0
        with bar:
            for target in targets:
                lines += await _ship(source.open(target, out.cursor(target.key)), target, out, bar)
        if not await out.flush(args.timeout):
            print(f"error: not every record of {args.job} was acknowledged within {args.timeout:g}s", file=sys.stderr)
            return EXIT_UNSENT
    print(f"backfill {args.job}: {lines} records from {len(targets)} task log(s), all acknowledged", file=sys.stderr)
    return 0


async def _ship(reader: Reader, target: Target, out: Delivery, bar: Any) -> int:
    """Read one log to its end (the reader is drained: partial last lines too); records shipped."""
    records = 0
    while True:
        async for span in reader.poll(draining=True):
            await out.put(span)
            records += len(span.records)
            bar.update(span.nbytes)
            bar.set_postfix(lines=records, refresh=False)
            if reader.status.lag_bytes is not None:
                bar.total = max(bar.total or 0, bar.n + reader.status.lag_bytes)
        if not reader.status.behind:
            return records


BACKFILL = Command("backfill", "ship a training job's whole log once, with a progress bar", add_arguments, run)


@hookimpl
def register_commands(register: Callable[[Command], None]) -> None:
    register(BACKFILL)
