"""The plain poller the API-budget benchmark compares us with: round robin, no priorities.

It cycles over every target (each job's task log preview and events, each service's update
log), one call per target per turn, one call at a time, through the project's own client
(``ModelArtsClient.connect`` with the default ``Backoff``): no poll intervals, no NEW/NEWS/IDLE
order. Lines are what is new in the preview since the last turn (it starts at the end, like the
receiver's default ``start_at: end``); a line stamped ``t=<ns>`` gives its freshness when
produced. Runs ``--seconds``, then prints one JSON line: lines, freshness, service states seen.

``python tests/benchmarks/roundrobin.py --sim INFO_JSON --seconds 90``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from collector_plugin.api import ApiError
from collector_plugin.auth import AkSkAuth
from collector_plugin.sources.modelarts import endpoints
from collector_plugin.sources.modelarts.client import ModelArtsClient


class RoundRobin:
    """One turn calls every target once; what it produced is kept for the report."""

    def __init__(self, client: ModelArtsClient, jobs: dict[str, list[str]], services: list[str]) -> None:
        self.client = client
        self.jobs = jobs
        self.services = services
        self.position: dict[tuple[str, str], int] = {}
        self.events_seen: dict[str, int] = {}
        self.states: set[tuple[str, int, str]] = set()
        self.lines = 0
        self.events = 0
        self.delays_ms: list[float] = []
        self.errors = 0
        self.turns = 0

    async def task_log(self, job: str, task: str) -> None:
        path = self.client.path(endpoints.TASK_LOG_PREVIEW, training_job_id=job, task_id=task)
        answer = await self.client.request_json("GET", path, endpoint=endpoints.TASK_LOG_PREVIEW)
        content = str(answer.get("content") or answer.get("context") or "").encode()
        size = int(answer.get("full_size") or 0)
        previous = self.position.get((job, task))
        self.position[(job, task)] = size
        if previous is None or size <= previous:  # the first turn starts at the end
            return
        new = content[max(0, previous - (size - len(content))) :]
        arrived = time.time_ns()
        for line in new.decode("utf-8", "replace").splitlines():
            self.lines += 1
            stamp = line[2 : line.find(" ")] if line.startswith("t=") else ""
            if stamp.isdigit():
                self.delays_ms.append((arrived - int(stamp)) / 1e6)

    async def job_events(self, job: str) -> None:
        path = self.client.path(endpoints.EVENTS, training_job_id=job)
        answer = await self.client.request_json("GET", path, endpoint=endpoints.EVENTS, params={"limit": 100})
        total = int(answer.get("total") or 0)
        self.events += max(0, total - self.events_seen.get(job, total))
        self.events_seen[job] = total

    async def service_log(self, service: str) -> None:
        path = self.client.path(endpoints.SERVICE_LOGS, service_id=service)
        answer = await self.client.request_json("GET", path, endpoint=endpoints.SERVICE_LOGS)
        for entry in answer.get("logs") or []:
            self.states.add((service, int(entry["update_time"]), str(entry["result"]).upper()))

    async def turn(self, deadline: float) -> None:
        calls = [*(self.task_log(j, t) for j, ts in self.jobs.items() for t in ts)]
        calls += [self.job_events(j) for j in self.jobs]
        calls += [self.service_log(s) for s in self.services]
        for call in calls:
            if time.monotonic() >= deadline:
                call.close()
                continue
            try:
                await call
            except ApiError:
                self.errors += 1  # refused again and again: try the target next turn
        self.turns += 1

    def report(self) -> dict[str, Any]:
        delays = sorted(self.delays_ms)
        p99 = delays[min(len(delays) - 1, int(0.99 * len(delays)))] if delays else None
        return {
            "lines": self.lines,
            "events": self.events,
            "delay_p99_ms": p99,
            "delay_max_ms": delays[-1] if delays else None,
            "states": sorted(self.states),
            "errors": self.errors,
            "turns": self.turns,
        }


async def run(sim: dict[str, Any], seconds: float) -> dict[str, Any]:
    client = ModelArtsClient.connect(sim["url"], sim["project_id"], auth=AkSkAuth(sim["ak"], sim["sk"]))
    poller = RoundRobin(client, sim["jobs"], sim["services"])
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            await poller.turn(deadline)
    finally:
        await client.aclose()
    return poller.report()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim", required=True, help="the JSON line sim_server.py printed")
    parser.add_argument("--seconds", type=float, default=90.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(json.loads(args.sim), args.seconds))), flush=True)


if __name__ == "__main__":
    main()
