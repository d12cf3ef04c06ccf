"""Training jobs: search and detail, v1 logs and their file names, v2 task log preview and logs/url."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from collector_plugin.simulator.protocol import (
    ApiOptions,
    BadRequest,
    Reply,
    Request,
    Route,
    error_reply,
    int_param,
    json_reply,
    route,
)
from collector_plugin.simulator.scenario import Scenario, TaskLog, TrainingJob, V1Job
from collector_plugin.simulator.signing import DEFAULT_USERNAME

V1_LOG = "/v1/{project_id}/training-jobs/{job_id}/versions/{version_id}/log"
V1_FILE_NAMES = "/v1/{project_id}/training-jobs/{job_id}/versions/{version_id}/log/file-names"
JOB_DETAILS = "/v2/{project_id}/training-jobs/{id}"
JOB_SEARCHES = "/v2/{project_id}/training-job-searches"
PREVIEW = "/v2/{project_id}/training-jobs/{id}/tasks/{task}/logs/preview"
OBS_URL = "/v2/{project_id}/training-jobs/{id}/tasks/{task}/logs/url"
V1_MAX_OFFSET = 2048
SEARCH_MAX_LIMIT = 50
V1_TEMPLATES = frozenset({V1_LOG, V1_FILE_NAMES})


def _is_cont(byte: int) -> bool:
    return (byte & 0xC0) == 0x80


def _seq_len(lead: int) -> int:
    if lead >= 0xF0:
        return 4
    if lead >= 0xE0:
        return 3
    return 2 if lead >= 0xC0 else 1


def split_edges(raw: bytes) -> tuple[int, int]:
    """Bytes of a partial UTF-8 character at the start and at the end of ``raw``."""
    head = 0
    while head < min(3, len(raw)) and _is_cont(raw[head]):
        head += 1
    tail = 0
    for back in range(1, min(3, len(raw) - head) + 1):
        byte = raw[-back]
        if _is_cont(byte):
            continue
        if byte >= 0xC0 and _seq_len(byte) > back:
            tail = back
        break
    return head, tail


def decode_range(raw: bytes, mode: str) -> str:
    """Decode a byte range the v1 API cut anywhere: partial edge characters dropped or replaced."""
    head, tail = split_edges(raw)
    text = raw[head : len(raw) - tail].decode("utf-8", "replace")
    if mode == "replace":
        text = ("\ufffd" if head else "") + text + ("\ufffd" if tail else "")
    return text


def job_details(job: TrainingJob) -> dict[str, Any]:
    phase = job.phase
    tasks = job.tasks
    exit_code = {"Failed": 1, "Completed": 0}.get(phase)
    return {
        "kind": "job",
        "metadata": {
            "id": job.id,
            "name": job.name,
            "workspace_id": "0",
            "description": "",
            "create_time": job.create_time,
            "user_name": DEFAULT_USERNAME,
        },
        "status": {
            "phase": phase,
            "secondary_phase": phase,
            "duration": job.duration_ms(),
            "tasks": tasks,
            "start_time": job.start_time,
            "task_statuses": [
                {"task": t, "exit_code": exit_code, "message": ""} for t in tasks if exit_code is not None
            ],
        },
        "algorithm": {"id": "", "name": "", "code_dir": "/modelarts-sim/code/", "boot_file": "train.py"},
        "spec": {"resource": {"flavor_id": "modelarts.vm.gpu.v100", "node_count": len(tasks)}},
    }


def _matches(job: TrainingJob, filters: list[Any]) -> bool:
    for f in filters:
        if not isinstance(f, dict):
            raise BadRequest("filters must be objects")
        key, op, values = f.get("key"), f.get("operator", "in"), f.get("value") or []
        if not isinstance(values, list):
            raise BadRequest("filter value must be a list")
        values = [str(v) for v in values]
        if key == "phase":
            actual = job.phase
        elif key in ("name", "job_name"):
            actual = job.name
        else:
            continue
        if op == "in" and actual not in values:
            return False
        if op == "not" and actual in values:
            return False
        if op == "like" and not any(v.lower() in actual.lower() for v in values):
            return False
    return True


def find_job(scenario: Scenario, req: Request) -> TrainingJob | Reply:
    """The v2 job a request's ``{id}`` names, or the 404 to send."""
    job = scenario.find_job(req.params["id"])
    if job is None:
        return error_reply(404, "ModelArts.2601", f"Training job {req.params['id']} not found.")
    return job


class TrainingApi:
    """The training-job endpoints; ``obs_link(job_id, task)`` signs the link ``logs/url`` returns."""

    def __init__(self, scenario: Scenario, options: ApiOptions, obs_link: Callable[[str, str], str]) -> None:
        self.scenario = scenario
        self.options = options
        self.obs_link = obs_link

    def routes(self) -> list[Route]:
        return [
            route("GET", V1_FILE_NAMES, self.v1_file_names),
            route("GET", V1_LOG, self.v1_log),
            route("POST", JOB_SEARCHES, self.job_searches),
            route("GET", PREVIEW, self.preview),
            route("GET", OBS_URL, self.obs_url),
            route("GET", JOB_DETAILS, self.job_details),
        ]

    def _task(self, req: Request) -> TaskLog | Reply:
        job = find_job(self.scenario, req)
        if isinstance(job, Reply):
            return job
        log = job.find_task(req.params["task"])
        if log is None:
            return error_reply(404, "ModelArts.2602", f"Task {req.params['task']} not found in the job.")
        return log

    def _v1_job(self, req: Request) -> V1Job | Reply:
        try:
            job_id, version_id = int(req.params["job_id"]), int(req.params["version_id"])
        except ValueError:
            raise BadRequest("job_id and version_id must be integers") from None
        job = self.scenario.find_v1_job(job_id, version_id)
        if job is None:
            return error_reply(404, "ModelArts.0104", "The training job version does not exist.", v1=True)
        return job

    def v1_log(self, req: Request) -> Reply:
        job = self._v1_job(req)
        if isinstance(job, Reply):
            return job
        name = req.query.get("log_file")
        if not name:
            raise BadRequest("log_file is required")
        start = int_param(req.query, "start_byte", 0)
        offset = int_param(req.query, "offset", V1_MAX_OFFSET)
        if start < -1:
            raise BadRequest("start_byte must be >= -1")
        if not -V1_MAX_OFFSET <= offset <= V1_MAX_OFFSET:
            raise BadRequest(f"offset must be within [-{V1_MAX_OFFSET}, {V1_MAX_OFFSET}]")
        log = job.find_file(name)
        if log is None:
            return error_reply(404, "ModelArts.0104", f"Log file {name} does not exist.", v1=True)
        with self.scenario.lock:
            size = log.size
            if start == -1:
                a, b = max(0, size - abs(offset)), size
            elif offset >= 0:
                a, b = start, min(start + offset, size)
            else:
                a, b = max(0, start + offset), min(start, size)
            raw, _ = log.read(a, b) if a < b else (b"", size)
        end = b if a < b else max(start, 0)
        count: int | str = len(raw)
        end_byte: int | str = end
        if self.options.has("v1_strings"):
            count, end_byte = str(count), str(end_byte)
        body: dict[str, Any] = {
            "is_success": True,
            "log": decode_range(raw, self.options.v1_split),
            "end_byte": end_byte,
        }
        body["count" if self.options.has("v1_count_field") else "log_byte_count"] = count
        return json_reply(body)

    def v1_file_names(self, req: Request) -> Reply:
        job = self._v1_job(req)
        if isinstance(job, Reply):
            return job
        return json_reply({"is_success": True, "log_file_list": job.file_names})

    def job_details(self, req: Request) -> Reply:
        job = find_job(self.scenario, req)
        return job if isinstance(job, Reply) else json_reply(job_details(job))

    def job_searches(self, req: Request) -> Reply:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            raise BadRequest("the body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be an object")
        page = body.get("offset", 0)
        limit = body.get("limit", 10)
        if not isinstance(page, int) or page < 0:
            raise BadRequest("offset is a page index >= 0")
        if not isinstance(limit, int) or not 1 <= limit <= SEARCH_MAX_LIMIT:
            raise BadRequest(f"limit must be within [1, {SEARCH_MAX_LIMIT}]")
        order = body.get("order", "desc")
        filters = body.get("filters") or []
        if not isinstance(filters, list):
            raise BadRequest("filters must be a list")
        jobs = [j for j in self.scenario.jobs if _matches(j, filters)]
        jobs.sort(key=lambda j: j.create_time, reverse=order != "asc")
        items = [job_details(j) for j in jobs[page * limit : (page + 1) * limit]]
        return json_reply(
            {
                "total": len(jobs),
                "count": len(items),
                "limit": limit,
                "offset": page,
                "sort_by": body.get("sort_by", "create_time"),
                "order": order,
                "group_by": "",
                "workspace_id": "0",
                "ai_project": "default-ai-project",
                "items": items,
            }
        )

    def preview(self, req: Request) -> Reply:
        log = self._task(req)
        if isinstance(log, Reply):
            return log
        with self.scenario.lock:
            size = log.size
            start = max(0, size - self.options.preview_cap)
            raw, _ = log.read(start, size)
        head = 0
        while head < min(3, len(raw)) and _is_cont(raw[head]):
            head += 1
        content = raw[head:].decode("utf-8", "replace")
        key = "context" if self.options.has("preview_context") else "content"
        return json_reply({key: content, "current_size": len(raw) - head, "full_size": size})

    def obs_url(self, req: Request) -> Reply:
        log = self._task(req)
        if isinstance(log, Reply):
            return log
        return json_reply({"obs_url": self.obs_link(req.params["id"], req.params["task"])})
