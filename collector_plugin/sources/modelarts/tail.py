"""``modelarts-receiver tail JOB``: print a training job's log (and events), like ``kubectl logs``.

A CLI command the ModelArts plugin contributes through ``register_commands``: it opens the task
log (and events) sources with the config shapes it owns, reads from the beginning and prints.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from collector_plugin.api import Command, CommandContext, Reader, hookimpl
from collector_plugin.sources.modelarts.events.source import SOURCE_NAME as EVENTS
from collector_plugin.sources.modelarts.task_logs import SOURCE as TASK_LOGS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="training job id")
    p.add_argument("--task", action="append", help="task name, e.g. worker-0 (repeatable; default: all)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--events", action="store_true", help="also print the job's events")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls with -f (default: 2)")
    p.add_argument("-v", "--verbose", action="store_true", help="prefix lines with time, level and task")


async def run(args: argparse.Namespace, ctx: CommandContext) -> int:
    wanted = {
        TASK_LOGS: {"start_at": "beginning", "flush_after": "1s", "jobs": [{"id": args.job, "tasks": args.task or []}]}
    }
    if args.events:
        wanted[EVENTS] = {"start_at": "beginning", "jobs": [{"id": args.job}]}
    readers: list[Reader] = []
    for name, config in wanted.items():
        source = ctx.open_source(name, config)
        readers += [source.open(target, None) for target in await source.targets()]
    while True:
        for reader in readers:
            async for span in reader.poll(draining=not args.follow):
                for record in span.records:
                    ctx.print_record(record, verbose=args.verbose)
        if not args.follow:
            return 0
        await asyncio.sleep(args.interval)


TAIL = Command("tail", "print a training job's log (like kubectl logs)", add_arguments, run)


@hookimpl
def register_commands(register: Callable[[Command], None]) -> None:
    register(TAIL)
