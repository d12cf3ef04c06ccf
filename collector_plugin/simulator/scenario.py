"""The simulator's state: jobs, task logs, events and services that tests change while it serves.

One re-entrant lock guards the whole scenario, so a request handler always sees a consistent
picture (a log's size and bytes from the same instant) while a test or the growth thread appends.
Logs are ``bytearray``s: appends are amortised O(1) and a read slices once.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from collector_plugin.simulator.content import LogGenerator

DEFAULT_PROJECT_ID = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
UPDATE_RESULTS = ("RUNNING", "SUCCESS", "FAIL")
BULK_THRESHOLD = 1 << 20


def now_ms() -> int:
    return int(time.time() * 1000)


def _as_bytes(data: bytes | bytearray | str) -> bytes | bytearray:
    return data.encode() if isinstance(data, str) else data


Clock = Callable[[], float]


class TaskLog:
    """A log that only grows, until the job restarts and it starts again shorter.

    It remembers when it reached each size (by ``clock``), so a copy that lags behind (the OBS
    object) can be served as it was some seconds ago.
    """

    def __init__(self, name: str, lock: threading.RLock, data: bytes | str = b"", *, clock: Clock = time.time) -> None:
        self.name = name
        self._lock = lock
        self._clock = clock
        self._data = bytearray(_as_bytes(data))
        self._times = [clock()]
        self._sizes = [len(self._data)]
        self.restarts = 0

    def _remember(self) -> None:
        self._times.append(self._clock())
        self._sizes.append(len(self._data))

    def append(self, data: bytes | bytearray | str) -> int:
        """Append bytes (or UTF-8 text); return the new size."""
        with self._lock:
            self._data += _as_bytes(data)
            self._remember()
            return len(self._data)

    def restart(self, data: bytes | str = b"") -> None:
        """Replace the log with ``data``: what a reader sees when the job restarts."""
        with self._lock:
            self._data = bytearray(_as_bytes(data))
            self._times, self._sizes = [self._clock()], [len(self._data)]
            self.restarts += 1

    def size_at(self, when: float) -> int:
        """The size the log had at clock time ``when`` (0 before it began; since its last restart)."""
        with self._lock:
            i = bisect.bisect_right(self._times, when)
            return self._sizes[i - 1] if i else 0

    @property
    def data(self) -> bytes:
        with self._lock:
            return bytes(self._data)

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._data)

    def read(self, start: int, end: int) -> tuple[bytes, int]:
        """Bytes ``[start, end)`` clamped to the log, and the log's size at that instant."""
        with self._lock:
            size = len(self._data)
            start = max(0, min(start, size))
            end = max(start, min(end, size))
            return bytes(memoryview(self._data)[start:end]), size


@dataclass(frozen=True)
class Event:
    time_ms: int
    seq: int
    level: str
    message: str
    source: str


class TrainingJob:
    """A v2 training job: tasks with logs, a phase, and events kept in time order."""

    def __init__(
        self,
        job_id: str,
        name: str,
        tasks: Iterable[str],
        phase: str,
        lock: threading.RLock,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.id = job_id
        self.name = name
        self._lock = lock
        self._clock = clock
        self._phase = phase
        self.create_time = now_ms()
        self.start_time = self.create_time
        self.end_time: int | None = None if phase in ("Running", "Pending", "Creating") else self.create_time
        self._tasks = {t: TaskLog(t, lock, clock=clock) for t in tasks}
        self._events: list[Event] = []
        self._seq = 0

    @property
    def phase(self) -> str:
        with self._lock:
            return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        with self._lock:
            self._phase = value
            running = value in ("Running", "Pending", "Creating")
            self.end_time = None if running else (self.end_time or now_ms())

    @property
    def tasks(self) -> list[str]:
        with self._lock:
            return list(self._tasks)

    def task(self, name: str) -> TaskLog:
        with self._lock:
            return self._tasks[name]

    def find_task(self, name: str) -> TaskLog | None:
        with self._lock:
            return self._tasks.get(name)

    def add_task(self, name: str) -> TaskLog:
        with self._lock:
            return self._tasks.setdefault(name, TaskLog(name, self._lock, clock=self._clock))

    def add_event(self, message: str, *, level: str = "Info", source: str = "Job", time_ms: int | None = None) -> Event:
        """Insert an event in time order (a late event with an older time lands where it belongs)."""
        with self._lock:
            self._seq += 1
            event = Event(now_ms() if time_ms is None else time_ms, self._seq, level, message, source)
            bisect.insort(self._events, event, key=lambda e: (e.time_ms, e.seq))
            return event

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def duration_ms(self) -> int:
        with self._lock:
            return (self.end_time or now_ms()) - self.start_time


class V1Job:
    """An old-API job version with named log files."""

    def __init__(
        self,
        job_id: int,
        version_id: int,
        files: Mapping[str, bytes | str],
        lock: threading.RLock,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.job_id = job_id
        self.version_id = version_id
        self._lock = lock
        self._clock = clock
        self._files = {name: TaskLog(name, lock, data, clock=clock) for name, data in files.items()}

    @property
    def file_names(self) -> list[str]:
        with self._lock:
            return list(self._files)

    def file(self, name: str) -> TaskLog:
        with self._lock:
            return self._files[name]

    def find_file(self, name: str) -> TaskLog | None:
        with self._lock:
            return self._files.get(name)

    def append(self, file_name: str, data: bytes | str) -> int:
        """Append to a file, creating it if the job starts writing a new one."""
        with self._lock:
            log = self._files.setdefault(file_name, TaskLog(file_name, self._lock, clock=self._clock))
            return log.append(data)


@dataclass
class Update:
    """One service update: RUNNING first, then SUCCESS or FAIL."""

    update_time: int
    config: list[dict[str, Any]]
    result: str = "RUNNING"
    success_num: int | None = None
    failed_num: int | None = None
    result_detail: list[dict[str, Any]] | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def finish(
        self,
        result: str = "SUCCESS",
        *,
        success_num: int | None = None,
        failed_num: int | None = None,
        result_detail: list[dict[str, Any]] | None = None,
    ) -> None:
        if result not in ("SUCCESS", "FAIL"):
            raise ValueError(f"an update finishes with SUCCESS or FAIL, not {result!r}")
        with self._lock:
            self.result = result
            if result_detail is not None:
                self.result_detail = result_detail
            if self.result_detail is not None:
                ok = sum(1 for d in self.result_detail if d.get("result"))
                self.success_num = ok if success_num is None else success_num
                self.failed_num = len(self.result_detail) - ok if failed_num is None else failed_num
            else:
                self.success_num = success_num
                self.failed_num = failed_num


def default_config(service_name: str, infer_type: str, version: int) -> list[dict[str, Any]]:
    """A service config with secret-looking env values, so redaction can be tested downstream."""
    config: dict[str, Any] = {
        "model_id": str(uuid.UUID(int=version * 7919 + len(service_name), version=4)),
        "model_name": service_name,
        "model_version": f"1.0.{version}",
        "specification": "modelarts.vm.cpu.2u",
        "envs": {
            "MODEL_LOG_LEVEL": "INFO",
            "DB_PASSWORD": f"s3cr3t-db-{version:04d}",
            "API_TOKEN": f"tok-{service_name}-{version:04d}",
        },
    }
    if infer_type == "real-time":
        config["weight"] = 100
        config["instance_count"] = 1 + version % 3
    return [config]


class Service:
    """An inference service whose update history grows as updates start and finish."""

    def __init__(self, service_id: str, name: str, infer_type: str, lock: threading.RLock) -> None:
        self.id = service_id
        self.name = name
        self.infer_type = infer_type
        self._lock = lock
        self._updates: list[Update] = []
        self.created_ms = now_ms()

    def start_update(self, config: list[dict[str, Any]] | None = None, *, time_ms: int | None = None) -> Update:
        with self._lock:
            when = time_ms
            if when is None:  # automatic times never collide; explicit ones are taken as given
                when = now_ms()
                if self._updates:
                    when = max(when, self._updates[-1].update_time + 1)
            cfg = config if config is not None else default_config(self.name, self.infer_type, len(self._updates) + 1)
            update = Update(update_time=when, config=cfg, _lock=self._lock)
            if self.infer_type == "edge":
                update.result_detail = []
            self._updates.append(update)
            return update

    @property
    def updates(self) -> list[Update]:
        with self._lock:
            return list(self._updates)

    @property
    def update_time(self) -> int:
        """When the service last changed (ms): its latest update's start, or its creation."""
        with self._lock:
            return self._updates[-1].update_time if self._updates else self.created_ms

    @property
    def status(self) -> str:
        with self._lock:
            if not self._updates:
                return "running"
            last = self._updates[-1].result
            return {"RUNNING": "deploying", "SUCCESS": "running", "FAIL": "failed"}[last]


def edge_detail(nodes: int, failed: int = 0, operation: str = "deploy") -> list[dict[str, Any]]:
    """``result_detail`` for an edge update over ``nodes`` nodes, the last ``failed`` of them failing."""
    return [
        {
            "node_id": f"node-{i:04d}",
            "node_name": f"edge-node-{i}",
            "operation": operation,
            "result": i < nodes - failed,
        }
        for i in range(nodes)
    ]


class Scenario:
    """Everything the simulated project holds. Thread-safe; mutate it while the server runs.

    ``clock`` stamps log growth (see :meth:`TaskLog.size_at`); give the simulator the same one.
    """

    def __init__(self, project_id: str = DEFAULT_PROJECT_ID, *, seed: int = 0, clock: Clock = time.time) -> None:
        self.project_id = project_id
        self.clock = clock
        self.lock = threading.RLock()
        self.generator = LogGenerator(seed)
        self._gen_lock = threading.Lock()
        self._rng = random.Random(seed)
        self._jobs: dict[str, TrainingJob] = {}
        self._v1_jobs: dict[tuple[int, int], V1Job] = {}
        self._services: dict[str, Service] = {}

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def add_job(
        self,
        job_id: str | None = None,
        *,
        name: str = "",
        tasks: Iterable[str] = ("worker-0",),
        phase: str = "Running",
    ) -> TrainingJob:
        with self.lock:
            job_id = job_id or self._uuid()
            job = TrainingJob(job_id, name or f"job-{job_id[:8]}", tasks, phase, self.lock, clock=self.clock)
            self._jobs[job_id] = job
            return job

    def job(self, job_id: str) -> TrainingJob:
        with self.lock:
            return self._jobs[job_id]

    def find_job(self, job_id: str) -> TrainingJob | None:
        with self.lock:
            return self._jobs.get(job_id)

    @property
    def jobs(self) -> list[TrainingJob]:
        with self.lock:
            return list(self._jobs.values())

    def remove_job(self, job_id: str) -> None:
        with self.lock:
            self._jobs.pop(job_id, None)

    def add_v1_job(self, job_id: int, version_id: int, files: Mapping[str, bytes | str] | None = None) -> V1Job:
        with self.lock:
            job = V1Job(job_id, version_id, files or {}, self.lock, clock=self.clock)
            self._v1_jobs[(job_id, version_id)] = job
            return job

    def v1_job(self, job_id: int, version_id: int) -> V1Job:
        with self.lock:
            return self._v1_jobs[(job_id, version_id)]

    def find_v1_job(self, job_id: int, version_id: int) -> V1Job | None:
        with self.lock:
            return self._v1_jobs.get((job_id, version_id))

    @property
    def v1_jobs(self) -> list[V1Job]:
        with self.lock:
            return list(self._v1_jobs.values())

    def add_service(self, service_id: str | None = None, *, name: str = "", infer_type: str = "real-time") -> Service:
        with self.lock:
            service_id = service_id or self._uuid()
            service = Service(service_id, name or f"service-{service_id[:8]}", infer_type, self.lock)
            self._services[service_id] = service
            return service

    def service(self, service_id: str) -> Service:
        with self.lock:
            return self._services[service_id]

    def find_service(self, service_id: str) -> Service | None:
        with self.lock:
            return self._services.get(service_id)

    @property
    def services(self) -> list[Service]:
        with self.lock:
            return list(self._services.values())

    def grow(self, log: TaskLog, nbytes: int) -> int:
        """Append at least ``nbytes`` of realistic complete lines; return the new size.

        Above 1 MiB the lines come from a pool (:meth:`LogGenerator.bulk`) so that benchmarks can
        build tens of MB quickly.
        """
        with self._gen_lock:
            chunk = self.generator.bulk(nbytes) if nbytes > BULK_THRESHOLD else self.generator.chunk(nbytes)
        return log.append(chunk)

    @classmethod
    def default(cls, seed: int = 0, project_id: str = DEFAULT_PROJECT_ID) -> Scenario:
        """A small realistic project: the demo's and ``simulate``'s starting point."""
        sc = cls(project_id, seed=seed)
        t0 = now_ms() - 600_000
        running = sc.add_job(name="resnet50-imagenet", tasks=("worker-0", "worker-1"))
        bert = sc.add_job(name="bert-finetune-中文", tasks=("worker-0",))
        failed = sc.add_job(name="llama-sft", tasks=("worker-0",), phase="Failed")
        done = sc.add_job(name="yolo-eval", tasks=("worker-0",), phase="Completed")
        for i, job in enumerate((running, bert, failed, done)):
            job.create_time = job.start_time = t0 + i * 1000
            for task in job.tasks:
                sc.grow(job.task(task), 48 * 1024)
            _lifecycle_events(job, t0)
        failed.task("worker-0").append("2024-05-18 14:40:00,000 - ERROR - training step failed\n" + _TRACEBACK_TAIL)
        failed.add_event("[worker-0] Training finished. Exit code 1.", source="Task", time_ms=t0 + 300_000)
        failed.add_event("Training job failed.", level="Error", time_ms=t0 + 300_000)
        done.add_event("[worker-0] Training finished. Exit code 0.", source="Task", time_ms=t0 + 200_000)
        done.add_event("Training job completed.", time_ms=t0 + 200_001)

        gen = sc.generator
        sc.add_v1_job(
            10001, 20001, {"job-worker-0.log": gen.chunk(24 * 1024), "job-worker-1.log": gen.chunk(16 * 1024)}
        )

        mnist = sc.add_service(name="mnist-realtime", infer_type="real-time")
        mnist.start_update(time_ms=t0).finish("SUCCESS")
        mnist.start_update(time_ms=t0 + 60_000).finish("FAIL")
        mnist.start_update(time_ms=t0 + 120_000).finish("SUCCESS")
        edge = sc.add_service(name="edge-detector", infer_type="edge")
        edge.start_update(time_ms=t0).finish("SUCCESS", result_detail=edge_detail(3))
        edge.start_update(time_ms=t0 + 90_000).finish("FAIL", result_detail=edge_detail(3, failed=1))
        sc.add_service(name="batch-scoring", infer_type="batch")
        return sc


_TRACEBACK_TAIL = (
    "Traceback (most recent call last):\n"
    '  File "/home/ma-user/modelarts/user-job-dir/code/train.py", line 212, in <module>\n'
    "    main()\n"
    "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1275, 通信超时\n"
    "[ModelArts Service Log][ERROR][2024/05/18 14:40:01,002]: training process exited with code 1 ❌\n"
)


def _lifecycle_events(job: TrainingJob, t0: int) -> None:
    """The events every job goes through, several of them sharing a timestamp as on the real API."""
    pod = f"modelarts-job-{job.id}"
    job.add_event("Training job is created.", time_ms=t0)
    for task in job.tasks:
        job.add_event(f"[Pod: {pod}-{task}] Scheduled: Successfully assigned", source="K8S", time_ms=t0 + 1000)
        job.add_event(f"[Pod: {pod}-{task}] Pulled: Successfully pulled image", source="K8S", time_ms=t0 + 5000)
        job.add_event(f"[Pod: {pod}-{task}] Started: Started container", source="K8S", time_ms=t0 + 5000)
        job.add_event(f"[{task}] training started.", source="Task", time_ms=t0 + 6000)
    job.add_event("Training job is running.", time_ms=t0 + 6000)
