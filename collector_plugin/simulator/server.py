"""The simulator's HTTP side: ModelArts endpoints, IAM login and OBS objects on one stdlib server.

Each handler enforces the limits the API documents (and that real servers enforce), so a receiver
that passes against the simulator does not trip over them in production. Shapes follow the
documentation's examples, including where they disagree with its own tables (see ``quirks``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import httpx

from collector_plugin.errors import AuthError
from collector_plugin.simulator.content import LogGenerator
from collector_plugin.simulator.faults import FaultInjector, FaultRule
from collector_plugin.simulator.scenario import BULK_THRESHOLD, Scenario, TaskLog, TrainingJob, V1Job, edge_detail

DEFAULT_AK = "SIMULATORAK0000000001"
DEFAULT_SK = "SimulatorSecretKey0000000000000000000001"
DEFAULT_USERNAME = "sim-user"
DEFAULT_PASSWORD = "sim-password"
DEFAULT_DOMAIN = "sim-domain"
OBS_BUCKET = "modelarts-sim-logs"
OBS_AK = "SIMOBSAK000000000001"
PREVIEW_CAP = 5 * 1024 * 1024
V1_MAX_OFFSET = 2048
EVENTS_MAX_LIMIT = 100
SEARCH_MAX_LIMIT = 50
CHINA_TZ = timezone(timedelta(hours=8))

ALL_QUIRKS = frozenset(
    {
        "v1_count_field",
        "v1_strings",
        "preview_context",
        "events_page_offset",
        "events_k8s_lower",
        "events_strings",
        "service_strings",
    }
)
# The documentation's own examples: v1 counts as strings under "count", one "K8s" event source,
# service update_time and weight as strings. Preview uses "content" (servers since 2022-03-01).
DEFAULT_QUIRKS = frozenset({"v1_count_field", "v1_strings", "events_k8s_lower", "service_strings"})

# Path templates, as recorded in RequestLog.endpoint.
IAM_TOKENS = "/v3/auth/tokens"
OBS_OBJECT = "/obs/{bucket}/{object}"
V1_LOG = "/v1/{project_id}/training-jobs/{job_id}/versions/{version_id}/log"
V1_FILE_NAMES = "/v1/{project_id}/training-jobs/{job_id}/versions/{version_id}/log/file-names"
JOB_DETAILS = "/v2/{project_id}/training-jobs/{id}"
JOB_SEARCHES = "/v2/{project_id}/training-job-searches"
PREVIEW = "/v2/{project_id}/training-jobs/{id}/tasks/{task}/logs/preview"
OBS_URL = "/v2/{project_id}/training-jobs/{id}/tasks/{task}/logs/url"
EVENTS = "/v2/{project_id}/training-jobs/{id}/events"
SERVICES = "/v1/{project_id}/services"
SERVICE_LOGS = "/v1/{project_id}/services/{service_id}/logs"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class RequestLog:
    """One request the simulator answered; ``endpoint`` is its path template."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    endpoint: str


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json;charset=UTF-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    raw_path: str
    raw_query: str
    query: dict[str, str]
    headers: httpx.Headers
    body: bytes
    params: dict[str, str]


class BadRequest(Exception):
    """A request parameter breaks a documented limit; the handler answers 400."""


def json_reply(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(obj, ensure_ascii=False).encode(), headers=headers or {})


def error_reply(status: int, code: str, msg: str, *, v1: bool = False) -> Reply:
    body: dict[str, Any] = {"error_code": code, "error_msg": msg}
    if v1:
        body = {"is_success": False, **body}
    return json_reply(body, status)


def obs_error(status: int, code: str, msg: str) -> Reply:
    body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{msg}</Message></Error>'
    return Reply(status, body.encode(), content_type="application/xml")


def iso_time(ms: int) -> str:
    """Event times as the documentation shows them: seconds precision, +08:00."""
    return datetime.fromtimestamp(ms / 1000, CHINA_TZ).isoformat(timespec="seconds")


def _int_param(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None


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


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(start, end_inclusive)``; None to send everything; ``"unsatisfiable"`` for a 416."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):
        n = int(m.group(2))
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if m.group(2) and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{object\}", "(?P<object>.+)")
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", pattern)
    return re.compile(f"^{pattern}$")


Handler = Callable[["Simulator", Request], Reply]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    api: bool = True


class Simulator:
    """A fake ModelArts (plus IAM and OBS) on 127.0.0.1, for tests, the demo and benchmarks.

    ``quirks`` picks which documented inconsistencies the answers show (see ``ALL_QUIRKS``);
    ``clock`` drives OBS link and IAM token expiry, so tests can expire them without sleeping.
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ak: str = DEFAULT_AK,
        sk: str = DEFAULT_SK,
        security_token: str | None = None,
        token: str | None = None,
        require_auth: bool = True,
        obs_ttl: float = 300.0,
        preview_cap: int = PREVIEW_CAP,
        v1_split: str = "drop",
        quirks: Iterable[str] | None = None,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        domain_name: str = DEFAULT_DOMAIN,
        token_ttl: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if v1_split not in ("drop", "replace"):
            raise ValueError("v1_split must be 'drop' or 'replace'")
        self.scenario = scenario if scenario is not None else Scenario()
        self.host = host
        self.port = port
        self.ak = ak
        self.sk = sk
        self.security_token = security_token
        self.token = token
        self.require_auth = require_auth
        self.obs_ttl = obs_ttl
        self.preview_cap = preview_cap
        self.v1_split = v1_split
        self.quirks = set(DEFAULT_QUIRKS if quirks is None else quirks)
        unknown = self.quirks - ALL_QUIRKS
        if unknown:
            raise ValueError(f"unknown quirks: {sorted(unknown)}")
        self.username = username
        self.password = password
        self.domain_name = domain_name
        self.token_ttl = token_ttl
        self.clock = clock
        self.faults = FaultInjector()
        self._obs_secret = secrets.token_bytes(32)
        self._tokens: dict[str, float] = {}
        self._requests: list[RequestLog] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._growth: _Growth | None = None

    # lifecycle

    @property
    def project_id(self) -> str:
        return self.scenario.project_id

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> Simulator:
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _RequestHandler)
        server.sim = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="modelarts-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_growth()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # growth

    def start_growth(
        self,
        bytes_per_second: int,
        *,
        interval: float = 0.25,
        event_interval: float = 5.0,
        update_interval: float = 30.0,
        seed: int = 1,
    ) -> None:
        """Append realistic lines to every running task and v1 file, add events, cycle updates."""
        self.stop_growth()
        self._growth = _Growth(self.scenario, bytes_per_second, interval, event_interval, update_interval, seed)
        self._growth.start()

    def stop_growth(self) -> None:
        growth, self._growth = self._growth, None
        if growth is not None:
            growth.stop()

    # request log

    @property
    def requests(self) -> list[RequestLog]:
        with self._lock:
            return list(self._requests)

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def count(self, endpoint: str | None = None, *, status: int | None = None) -> int:
        """Requests seen for ``endpoint`` (a path template), optionally with a given status."""
        with self._lock:
            return sum(
                1
                for r in self._requests
                if (endpoint is None or r.endpoint == endpoint) and (status is None or r.status == status)
            )

    def _record(self, entry: RequestLog) -> None:
        with self._lock:
            self._requests.append(entry)

    # auth

    def issue_token(self) -> str:
        """A fresh IAM token, as a password login would return."""
        value = "MIIsim-" + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[value] = self.clock() + self.token_ttl
        return value

    def _token_ok(self, value: str) -> bool:
        if self.token is not None and hmac.compare_digest(value, self.token):
            return True
        with self._lock:
            expires = self._tokens.get(value)
        return expires is not None and self.clock() < expires

    def _secret_for(self, ak: str) -> str | None:
        return self.sk if ak == self.ak else None

    def authenticate(self, req: Request) -> Reply | None:
        """None when the request is authenticated, else the 401 to send."""
        if not self.require_auth:
            return None
        token = req.headers.get("x-auth-token")
        if token is not None:
            return None if self._token_ok(token) else _auth_failed("the token is invalid or has expired")
        if "authorization" not in req.headers:
            return _auth_failed("no Authorization header and no X-Auth-Token")
        from collector_plugin.auth import verify_signature

        try:
            verify_signature(req.method, req.raw_path, req.raw_query, req.headers, req.body, self._secret_for)
        except AuthError as err:
            return _auth_failed(str(err))
        if self.security_token is not None:
            sent = req.headers.get("x-security-token", "")
            if not hmac.compare_digest(sent, self.security_token):
                return _auth_failed("the security token is missing or wrong")
        return None

    # OBS links

    def _obs_signature(self, key: str, expires: int) -> str:
        to_sign = f"GET\n\n\n{expires}\n/{OBS_BUCKET}/{key}".encode()
        return base64.b64encode(hmac.new(self._obs_secret, to_sign, hashlib.sha1).digest()).decode()

    def obs_url(self, job_id: str, task: str) -> str:
        """A temporary link to a task's live log, valid for ``obs_ttl`` seconds."""
        key = f"{job_id}/{task}/modelarts-job-{job_id}-{task}.log"
        expires = math.ceil(self.clock() + self.obs_ttl)
        sig = quote(self._obs_signature(key, expires), safe="")
        return f"{self.url}/obs/{OBS_BUCKET}/{quote(key)}?AWSAccessKeyId={OBS_AK}&Expires={expires}&Signature={sig}"

    # dispatch

    def handle(self, req: Request, route: Route) -> Reply:
        if route.api:
            denied = self.authenticate(req)
            if denied is not None:
                return denied
            if req.params.get("project_id", self.project_id) != self.project_id:
                return error_reply(403, "ModelArts.0004", "The project ID does not match the credentials.")
        try:
            return route.handler(self, req)
        except BadRequest as err:
            v1 = route.template in (V1_LOG, V1_FILE_NAMES)
            code = "ModelArts.0105" if v1 else "ModelArts.50004000"
            return error_reply(400, code, f"Bad request. {err}", v1=v1)


def _auth_failed(reason: str) -> Reply:
    return error_reply(401, "APIG.0301", f"Incorrect IAM authentication information: {reason}")


# ---- handlers ----------------------------------------------------------------------------------


def _job(sim: Simulator, req: Request) -> TrainingJob | Reply:
    job = sim.scenario.find_job(req.params["id"])
    if job is None:
        return error_reply(404, "ModelArts.2601", f"Training job {req.params['id']} not found.")
    return job


def _task(sim: Simulator, req: Request) -> TaskLog | Reply:
    job = _job(sim, req)
    if isinstance(job, Reply):
        return job
    log = job.find_task(req.params["task"])
    if log is None:
        return error_reply(404, "ModelArts.2602", f"Task {req.params['task']} not found in the job.")
    return log


def _v1_job(sim: Simulator, req: Request) -> V1Job | Reply:
    try:
        job_id, version_id = int(req.params["job_id"]), int(req.params["version_id"])
    except ValueError:
        raise BadRequest("job_id and version_id must be integers") from None
    job = sim.scenario.find_v1_job(job_id, version_id)
    if job is None:
        return error_reply(404, "ModelArts.0104", "The training job version does not exist.", v1=True)
    return job


def handle_v1_log(sim: Simulator, req: Request) -> Reply:
    job = _v1_job(sim, req)
    if isinstance(job, Reply):
        return job
    name = req.query.get("log_file")
    if not name:
        raise BadRequest("log_file is required")
    start = _int_param(req.query, "start_byte", 0)
    offset = _int_param(req.query, "offset", V1_MAX_OFFSET)
    if start < -1:
        raise BadRequest("start_byte must be >= -1")
    if not -V1_MAX_OFFSET <= offset <= V1_MAX_OFFSET:
        raise BadRequest(f"offset must be within [-{V1_MAX_OFFSET}, {V1_MAX_OFFSET}]")
    log = job.find_file(name)
    if log is None:
        return error_reply(404, "ModelArts.0104", f"Log file {name} does not exist.", v1=True)
    with sim.scenario.lock:
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
    if "v1_strings" in sim.quirks:
        count, end_byte = str(count), str(end_byte)
    body: dict[str, Any] = {"is_success": True, "log": decode_range(raw, sim.v1_split), "end_byte": end_byte}
    body["count" if "v1_count_field" in sim.quirks else "log_byte_count"] = count
    return json_reply(body)


def handle_v1_file_names(sim: Simulator, req: Request) -> Reply:
    job = _v1_job(sim, req)
    if isinstance(job, Reply):
        return job
    return json_reply({"is_success": True, "log_file_list": job.file_names})


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


def handle_job_details(sim: Simulator, req: Request) -> Reply:
    job = _job(sim, req)
    return job if isinstance(job, Reply) else json_reply(job_details(job))


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


def handle_job_searches(sim: Simulator, req: Request) -> Reply:
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
    jobs = [j for j in sim.scenario.jobs if _matches(j, filters)]
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


def handle_preview(sim: Simulator, req: Request) -> Reply:
    log = _task(sim, req)
    if isinstance(log, Reply):
        return log
    with sim.scenario.lock:
        size = log.size
        start = max(0, size - sim.preview_cap)
        raw, _ = log.read(start, size)
    head = 0
    while head < min(3, len(raw)) and _is_cont(raw[head]):
        head += 1
    content = raw[head:].decode("utf-8", "replace")
    key = "context" if "preview_context" in sim.quirks else "content"
    return json_reply({key: content, "current_size": len(raw) - head, "full_size": size})


def handle_obs_url(sim: Simulator, req: Request) -> Reply:
    log = _task(sim, req)
    if isinstance(log, Reply):
        return log
    return json_reply({"obs_url": sim.obs_url(req.params["id"], req.params["task"])})


def handle_events(sim: Simulator, req: Request) -> Reply:
    job = _job(sim, req)
    if isinstance(job, Reply):
        return job
    q = req.query
    limit = _int_param(q, "limit", 50)
    offset = _int_param(q, "offset", 0)
    if not 1 <= limit <= EVENTS_MAX_LIMIT:
        raise BadRequest(f"limit must be within [1, {EVENTS_MAX_LIMIT}]")
    if offset < 0:
        raise BadRequest("offset must be >= 0")
    has_start, has_end = bool(q.get("start_time")), bool(q.get("end_time"))
    if has_start != has_end:
        raise BadRequest("start_time and end_time must be given together")
    order = q.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise BadRequest("order must be asc or desc")
    pattern = q.get("pattern") or ""
    if len(pattern) > 256:
        raise BadRequest("pattern is longer than 256 characters")
    level = (q.get("level") or "").lower()
    source = (q.get("source") or "").lower()
    start_ms = _int_param(q, "start_time", 0)
    end_ms = _int_param(q, "end_time", 0)
    events = [
        e
        for e in job.events
        if (not level or e.level.lower() == level)
        and (not source or e.source.lower() == source)
        and (not pattern or pattern in e.message)
        and (not has_start or start_ms <= e.time_ms <= end_ms)
    ]
    if order == "desc":
        events.reverse()
    first = offset * limit if "events_page_offset" in sim.quirks else offset
    page = events[first : first + limit]
    k8s = "K8s" if "events_k8s_lower" in sim.quirks else "K8S"
    as_str = "events_strings" in sim.quirks
    body: dict[str, Any] = {
        "total": str(len(events)) if as_str else len(events),
        "limit": str(limit) if as_str else limit,
        "offset": str(offset) if as_str else offset,
        "order": order,
    }
    if has_start:
        body["start_time"] = iso_time(start_ms)
        body["end_time"] = iso_time(end_ms)
    body["events"] = [
        {
            "time": iso_time(e.time_ms),
            "level": e.level,
            "message": e.message,
            "source": k8s if e.source.upper() == "K8S" else e.source,
        }
        for e in page
    ]
    return json_reply(body)


def handle_services(sim: Simulator, req: Request) -> Reply:
    q = req.query
    page = _int_param(q, "offset", 0)
    limit = _int_param(q, "limit", 1000)
    if page < 0 or limit < 1:
        raise BadRequest("offset must be >= 0 and limit >= 1")
    infer_type = q.get("infer_type")
    name = q.get("service_name")
    status = q.get("status")
    services = [
        s
        for s in sim.scenario.services
        if (not infer_type or s.infer_type == infer_type)
        and (not name or name in s.name)
        and (not status or s.status == status)
    ]
    chosen = services[page * limit : (page + 1) * limit]
    return json_reply(
        {
            "total_count": len(services),
            "count": len(chosen),
            "services": [
                {"service_id": s.id, "service_name": s.name, "infer_type": s.infer_type, "status": s.status}
                for s in chosen
            ],
        }
    )


def handle_service_logs(sim: Simulator, req: Request) -> Reply:
    service = sim.scenario.find_service(req.params["service_id"])
    if service is None:
        return error_reply(404, "ModelArts.3502", f"Service {req.params['service_id']} not found.")
    if service.infer_type not in ("real-time", "edge"):
        return error_reply(400, "ModelArts.3520", "Update logs exist only for real-time and edge services.")
    as_str = "service_strings" in sim.quirks
    logs = []
    with sim.scenario.lock:
        for update in service.updates:
            entry: dict[str, Any] = {
                "update_time": str(update.update_time) if as_str else update.update_time,
                "result": update.result,
                "config": [_service_config(c, as_str) for c in update.config],
            }
            if service.infer_type == "edge":
                entry["success_num"] = update.success_num or 0
                entry["failed_num"] = update.failed_num or 0
                entry["result_detail"] = [dict(d) for d in update.result_detail or []]
            logs.append(entry)
    return json_reply({"service_id": service.id, "service_name": service.name, "logs": logs})


def _service_config(config: dict[str, Any], as_str: bool) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    if as_str and "weight" in out:
        out["weight"] = str(out["weight"])
    return out


def handle_iam_login(sim: Simulator, req: Request) -> Reply:
    try:
        body = json.loads(req.body or b"{}")
        identity = body["auth"]["identity"]
        user = identity["password"]["user"]
        ok = (
            "password" in identity.get("methods", [])
            and user.get("name") == sim.username
            and hmac.compare_digest(str(user.get("password", "")), sim.password)
            and user.get("domain", {}).get("name") == sim.domain_name
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        err = {"error": {"code": 401, "message": "The username or password is wrong.", "title": "Unauthorized"}}
        return json_reply(err, 401)
    token = sim.issue_token()
    with sim._lock:
        expires = sim._tokens[token]
    stamp = datetime.fromtimestamp(expires, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    issued = datetime.fromtimestamp(sim.clock(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    payload = {
        "token": {
            "expires_at": stamp,
            "issued_at": issued,
            "methods": ["password"],
            "project": {"id": sim.project_id, "name": "cn-north-4"},
            "user": {"name": sim.username, "domain": {"name": sim.domain_name}},
        }
    }
    return json_reply(payload, 201, headers={"X-Subject-Token": token})


def handle_obs(sim: Simulator, req: Request) -> Reply:
    if req.params["bucket"] != OBS_BUCKET:
        return obs_error(404, "NoSuchBucket", "The specified bucket does not exist.")
    key = unquote(req.params["object"])
    q = req.query
    try:
        expires = int(q.get("Expires", ""))
    except ValueError:
        return obs_error(403, "AccessDenied", "Request is missing or has a bad Expires parameter.")
    expected = sim._obs_signature(key, expires)
    if q.get("AWSAccessKeyId") != OBS_AK or not hmac.compare_digest(q.get("Signature", ""), expected):
        return obs_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match.")
    if sim.clock() > expires:
        return obs_error(403, "AccessDenied", "Request has expired.")
    parts = key.split("/")
    job = sim.scenario.find_job(parts[0]) if len(parts) == 3 else None
    log = job.find_task(parts[1]) if job is not None else None
    if log is None:
        return obs_error(404, "NoSuchKey", "The specified key does not exist.")
    with sim.scenario.lock:
        size = log.size
        wanted = parse_range(req.headers.get("range"), size)
        if wanted == "unsatisfiable":
            reply = obs_error(416, "InvalidRange", "The requested range cannot be satisfied.")
            reply.headers["Content-Range"] = f"bytes */{size}"
            return reply
        if wanted is None:
            data, _ = log.read(0, size)
            return Reply(200, data, "text/plain", {"Accept-Ranges": "bytes"})
        assert isinstance(wanted, tuple)
        a, b = wanted
        data, _ = log.read(a, b + 1)
    return Reply(206, data, "text/plain", {"Accept-Ranges": "bytes", "Content-Range": f"bytes {a}-{b}/{size}"})


def _route(method: str, template: str, handler: Handler, api: bool = True) -> Route:
    return Route(method, template, _compile(template), handler, api)


ROUTES: tuple[Route, ...] = (
    _route("POST", IAM_TOKENS, handle_iam_login, api=False),
    _route("GET", OBS_OBJECT, handle_obs, api=False),
    _route("GET", V1_FILE_NAMES, handle_v1_file_names),
    _route("GET", V1_LOG, handle_v1_log),
    _route("POST", JOB_SEARCHES, handle_job_searches),
    _route("GET", PREVIEW, handle_preview),
    _route("GET", OBS_URL, handle_obs_url),
    _route("GET", EVENTS, handle_events),
    _route("GET", JOB_DETAILS, handle_job_details),
    _route("GET", SERVICES, handle_services),
    _route("GET", SERVICE_LOGS, handle_service_logs),
)


def find_route(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    for route in ROUTES:
        m = route.pattern.match(path)
        if m and route.method == method:
            return route, {k: unquote(v) for k, v in m.groupdict().items()}
    return None


# ---- HTTP plumbing -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    sim: Simulator

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def close_connections(self) -> None:
        """Drop kept-alive connections, so a stopped simulator really stops answering."""
        with self.connections_lock:
            conns, self.open_connections = self.open_connections, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Client disconnects and injected resets are expected; stay quiet."""


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # head and body in one send: separate small sends meet delayed ACKs
    server: _Server
    timeout = 60

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: request URLs can carry OBS signatures."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        sim = self.server.sim
        raw_path, _, raw_query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        found = find_route(self.command, raw_path)
        endpoint = found[0].template if found else UNKNOWN
        rule = sim.faults.match(self.command, raw_path)
        if rule is not None and rule.delay:
            time.sleep(rule.delay)
        if rule is not None and rule.reset:
            sim._record(RequestLog(self.command, raw_path, _redact(query), 0, endpoint))
            self._reset()
            return
        if rule is not None and rule.answers:
            reply = _fault_reply(rule)
        elif found is None:
            reply = error_reply(404, "APIG.0101", "The API does not exist or has not been published.")
        else:
            headers = httpx.Headers(list(self.headers.items()))
            req = Request(self.command, raw_path, raw_query, query, headers, body, found[1])
            reply = sim.handle(req, found[0])
        sim._record(RequestLog(self.command, raw_path, _redact(query), reply.status, endpoint))
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST, as a crashing proxy does."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()


def _redact(query: dict[str, str]) -> dict[str, str]:
    return {k: ("***" if k in ("Signature", "AWSAccessKeyId") else v) for k, v in query.items()}


def _fault_reply(rule: FaultRule) -> Reply:
    status = rule.status if rule.status is not None else 200
    content_type = "text/html" if rule.body is not None else "application/json;charset=UTF-8"
    reply = Reply(status, rule.error_body(), content_type)
    if rule.retry_after is not None:
        value = rule.retry_after
        reply.headers["Retry-After"] = str(int(value) if isinstance(value, float) and value.is_integer() else value)
    return reply


# ---- growth --------------------------------------------------------------------------------------


class _Growth:
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
