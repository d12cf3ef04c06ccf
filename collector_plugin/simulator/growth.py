"""Background growth for the demo and benchmarks: logs grow, events arrive, services update."""

from __future__ import annotations

import threading
import time

from collector_plugin.simulator.content import LogGenerator
from collector_plugin.simulator.scenario import BULK_THRESHOLD, Scenario, TaskLog, edge_detail


class Growth:
    """Background writer: logs grow, events arrive (some sharing a timestamp), services update."""

    def __init__(
        self,
        scenario: Scenario,
        bytes_per_second: int,
        interval: float,
        event_interval: float,
        update_interval: float,
        seed: int,
    ) -> None:
        self.scenario = scenario
        self.bps = bytes_per_second
        self.interval = interval
        self.event_interval = event_interval
        self.update_interval = update_interval
        self.generator = LogGenerator(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelarts-simulator-growth", daemon=True)
        self._budget = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last_event = last_update = time.monotonic()
        while not self._stop.wait(self.interval):
            self.tick()
            now = time.monotonic()
            if self.event_interval > 0 and now - last_event >= self.event_interval:
                last_event = now
                self.add_events()
            if self.update_interval > 0 and now - last_update >= self.update_interval:
                last_update = now
                self.cycle_updates()

    def logs(self) -> list[TaskLog]:
        out = [j.task(t) for j in self.scenario.jobs if j.phase == "Running" for t in j.tasks]
        out += [v.file(n) for v in self.scenario.v1_jobs for n in v.file_names]
        return out

    def tick(self) -> None:
        logs = self.logs()
        if not logs or self.bps <= 0:
            return
        self._budget += self.bps * self.interval
        share = self._budget / len(logs)
        if share < 1:
            return
        gen = self.generator
        for log in logs:
            chunk = gen.bulk(int(share)) if share > BULK_THRESHOLD / 4 else gen.chunk(int(share))
            log.append(chunk)
            self._budget -= len(chunk)

    def add_events(self) -> None:
        running = [j for j in self.scenario.jobs if j.phase == "Running"]
        if not running:
            return
        rng = self.generator.rng
        job = rng.choice(running)
        stamp = int(time.time() * 1000)
        for _ in range(rng.randint(1, 3)):
            message, level, source = self.generator.event_message(rng.choice(job.tasks or ["worker-0"]))
            job.add_event(message, level=level, source=source, time_ms=stamp)

    def cycle_updates(self) -> None:
        rng = self.generator.rng
        for service in self.scenario.services:
            if service.infer_type not in ("real-time", "edge"):
                continue
            updates = service.updates
            if updates and updates[-1].result == "RUNNING":
                result = "SUCCESS" if rng.random() < 0.8 else "FAIL"
                detail = (
                    edge_detail(3, failed=0 if result == "SUCCESS" else 1) if service.infer_type == "edge" else None
                )
                updates[-1].finish(result, result_detail=detail)
            else:
                service.start_update()
