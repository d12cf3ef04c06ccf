"""``modelarts-receiver tail JOB``: print a training job's log (and events), like ``kubectl logs``.

A CLI command the ModelArts plugin contributes through ``register_commands``: it opens the task
log (and events) sources with the config shapes it owns, reads from the beginning and prints.
The job is looked up first, so a wrong id or an unreachable API is one clear error (exit 1)
instead of an empty, successful run.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence

from collector_plugin.api import ApiError, Command, CommandContext, Reader, ReceiverError, hookimpl
from collector_plugin.sources.modelarts import discovery
from collector_plugin.sources.modelarts.client import ModelArtsClient
from collector_plugin.sources.modelarts.events.source import SOURCE_NAME as EVENTS
from collector_plugin.sources.modelarts.task_logs import SOURCE as TASK_LOGS
from collector_plugin.sources.modelarts.task_logs import TaskLogsSource


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="training job id")
    p.add_argument("--task", action="append", help="task name, e.g. worker-0 (repeatable; default: all)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (default: off)")
    p.add_argument("--events", action="store_true", help="also print the job's events (default: off)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls with -f (default: 2)")
    p.add_argument("-v", "--verbose", action="store_true", help="prefix lines with time, level and task (default: off)")


async def check_job(client: ModelArtsClient, job_id: str, tasks: Sequence[str]) -> discovery.JobInfo:
    """The job's details, or a :class:`ReceiverError` saying plainly why there are none."""
    try:
        info = await discovery.get_job(client, job_id)
    except ApiError as exc:
        if exc.status == 404:
            raise ReceiverError(f"training job {job_id} not found") from None
        if exc.status == 0:
            reason = f" ({exc.error_msg})" if exc.error_msg else ""
            raise ReceiverError(f"cannot reach the ModelArts API at {client.api.base_url}{reason}") from None
        raise
    missing = [task for task in tasks if task not in info.tasks]
    if missing and info.tasks:
        known = ", ".join(info.tasks)
        raise ReceiverError(f"training job {job_id} has no task {', '.join(missing)} (its tasks: {known})")
    return info


async def run(args: argparse.Namespace, ctx: CommandContext) -> int:
    tasks: list[str] = args.task or []
    wanted = {TASK_LOGS: {"start_at": "beginning", "flush_after": "1s", "jobs": [{"id": args.job, "tasks": tasks}]}}
    if args.events:
        wanted[EVENTS] = {"start_at": "beginning", "jobs": [{"id": args.job}]}
    readers: list[Reader] = []
    for name, config in wanted.items():
        source = ctx.open_source(name, config)
        if isinstance(source, TaskLogsSource):
            await check_job(source.client, args.job, tasks)
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
