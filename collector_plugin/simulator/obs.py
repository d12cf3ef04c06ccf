"""OBS: the temporary signed links ``logs/url`` hands out and the objects behind them.

A link is valid for ``ttl`` seconds and honours ``Range`` as OBS does (206, 416 with
``Content-Range: bytes */size``). With ``lag`` > 0 the object holds the log as it was ``lag``
seconds ago: OBS receives a task's log later than the preview shows it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Callable
from urllib.parse import quote, unquote

from collector_plugin.simulator.protocol import Reply, Request, Route, route
from collector_plugin.simulator.scenario import Scenario, TaskLog

OBS_BUCKET = "modelarts-sim-logs"
OBS_AK = "SIMOBSAK000000000001"
OBS_OBJECT = "/obs/{bucket}/{object}"

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def obs_error(status: int, code: str, msg: str) -> Reply:
    body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{msg}</Message></Error>'
    return Reply(status, body.encode(), content_type="application/xml")


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


def object_key(job_id: str, task: str) -> str:
    return f"{job_id}/{task}/modelarts-job-{job_id}-{task}.log"


class ObsStore:
    """Signs links to task logs and serves them; ``ttl`` and ``lag`` may change while it runs."""

    def __init__(self, scenario: Scenario, *, ttl: float, lag: float, clock: Callable[[], float]) -> None:
        if lag < 0:
            raise ValueError("obs_lag must be >= 0 seconds")
        self.scenario = scenario
        self.ttl = ttl
        self.lag = lag
        self.clock = clock
        self._secret = secrets.token_bytes(32)

    def routes(self) -> list[Route]:
        return [route("GET", OBS_OBJECT, self.get_object, api=False)]

    def signature(self, key: str, expires: int) -> str:
        to_sign = f"GET\n\n\n{expires}\n/{OBS_BUCKET}/{key}".encode()
        return base64.b64encode(hmac.new(self._secret, to_sign, hashlib.sha1).digest()).decode()

    def url(self, base: str, job_id: str, task: str) -> str:
        """A temporary link to a task's log, valid for ``ttl`` seconds."""
        key = object_key(job_id, task)
        expires = math.ceil(self.clock() + self.ttl)
        sig = quote(self.signature(key, expires), safe="")
        return f"{base}/obs/{OBS_BUCKET}/{quote(key)}?AWSAccessKeyId={OBS_AK}&Expires={expires}&Signature={sig}"

    def _denied(self, key: str, query: dict[str, str]) -> Reply | None:
        try:
            expires = int(query.get("Expires", ""))
        except ValueError:
            return obs_error(403, "AccessDenied", "Request is missing or has a bad Expires parameter.")
        expected = self.signature(key, expires)
        if query.get("AWSAccessKeyId") != OBS_AK or not hmac.compare_digest(query.get("Signature", ""), expected):
            return obs_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match.")
        if self.clock() > expires:
            return obs_error(403, "AccessDenied", "Request has expired.")
        return None

    def _log(self, key: str) -> TaskLog | None:
        parts = key.split("/")
        job = self.scenario.find_job(parts[0]) if len(parts) == 3 else None
        return job.find_task(parts[1]) if job is not None else None

    def object_size(self, log: TaskLog) -> int:
        """How much of the log OBS holds now: all of it, or what it held ``lag`` seconds ago."""
        return log.size if self.lag <= 0 else log.size_at(self.clock() - self.lag)

    def get_object(self, req: Request) -> Reply:
        if req.params["bucket"] != OBS_BUCKET:
            return obs_error(404, "NoSuchBucket", "The specified bucket does not exist.")
        key = unquote(req.params["object"])
        denied = self._denied(key, req.query)
        if denied is not None:
            return denied
        log = self._log(key)
        if log is None:
            return obs_error(404, "NoSuchKey", "The specified key does not exist.")
        with self.scenario.lock:
            size = self.object_size(log)
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
