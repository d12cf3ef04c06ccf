"""``modelarts-receiver backfill JOB``: ship a training job's whole log once, with a progress bar.

A CLI command the ModelArts plugin contributes. It reads every task log of the job from the
beginning (or from its committed cursor: a backfill stopped half way resumes, and ``run`` does not
send again what it shipped, since both share the checkpoint store and the read-time journal),
sends through the configured exporter and exits 0 once everything was acknowledged.

``--since T`` (``2h``, ``30m``, ``1d``, or an ISO-8601 time) starts each log at its first line that
*begins with a timestamp* at or after T: a log line has no time of its own in the API, so the
time is taken from the line's text (``2026-12-01 10:00:00``, ``[2026-12-01T10:00:00Z]``...; no
zone means UTC). Lines before it are read and skipped (counted, and their cursor committed, so
``run`` does not send them either); from that line on everything is shipped, stamped or not
(tracebacks, progress). A log without such a line ships nothing and says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from tqdm import tqdm

from collector_plugin.api import Command, CommandContext, Delivery, Reader, Span, Target, hookimpl
from collector_plugin.sources.modelarts.task_logs import SOURCE as TASK_LOGS

EXIT_UNSENT = 3

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_LEADING_TIME = re.compile(r"^\W{0,3}(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?)")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``2h`` / ``30m`` / ``90s`` / ``1d`` ago, or an ISO-8601 time (UTC when it names no zone)."""
    now = now or datetime.now(timezone.utc)
    ago = _AGO.match(text.strip())
    if ago:
        return now - timedelta(**{_UNITS[ago.group(2)]: float(ago.group(1))})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r}: expected a duration ago (90s, 30m, 2h, 1d) or an ISO-8601 time (2026-12-01T10:00:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def line_time(body: object) -> datetime | None:
    """The timestamp a log line starts with, if any (UTC when it names no zone)."""
    found = _LEADING_TIME.match(body) if isinstance(body, str) else None
    if found is None:
        return None
    try:
        when = datetime.fromisoformat(found.group(1).replace(",", ".").replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@dataclasses.dataclass
class Since:
    """Drops a log's lines until the first that starts with a time at or after ``since``."""

    since: datetime
    started: bool = False
    skipped: int = 0

    def span(self, span: Span) -> Span:
        if self.started:
            return span
        kept = []
        for record in span.records:
            if not self.started and not record.event_name:  # notices (gaps, completeness) always go
                when = line_time(record.body)
                self.started = when is not None and when >= self.since
                if not self.started:
                    self.skipped += 1
                    continue
            kept.append(record)
        return dataclasses.replace(span, records=kept)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="training job id")
    p.add_argument("--task", action="append", help="task name, e.g. worker-0 (repeatable; default: every task)")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the last acknowledgements (default: 300)"
    )
    p.add_argument(
        "--since",
        type=parse_since,
        metavar="WHEN",
        help="start each log at its first line beginning with a timestamp at or after WHEN: 2h, 30m, 1d ago,"
        " or an ISO-8601 time (UTC if no zone); earlier lines are skipped and not sent by run either"
        " (default: the whole log)",
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
        lines = skipped = 0
        never: list[str] = []
        with bar:
            for target in targets:
                since = Since(args.since) if args.since is not None else None
                lines += await _ship(source.open(target, out.cursor(target.key)), target, out, bar, since)
                if since is not None:
                    skipped += since.skipped
                    if not since.started:
                        never.append(str(getattr(target, "task", target.key)))
        if not await out.flush(args.timeout):
            print(f"error: not every record of {args.job} was acknowledged within {args.timeout:g}s", file=sys.stderr)
            return EXIT_UNSENT
    if args.since is not None:
        print(
            f"backfill {args.job}: skipped {skipped} lines before {args.since.isoformat()}"
            + (f"; no line at or after it starts with a timestamp in: {', '.join(never)}" if never else ""),
            file=sys.stderr,
        )
    print(f"backfill {args.job}: {lines} records from {len(targets)} task log(s), all acknowledged", file=sys.stderr)
    return 0


async def _ship(reader: Reader, target: Target, out: Delivery, bar: Any, since: Since | None = None) -> int:
    """Read one log to its end (the reader is drained: partial last lines too); records shipped."""
    records = 0
    while True:
        async for read in reader.poll(draining=True):
            span = read if since is None else since.span(read)
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
