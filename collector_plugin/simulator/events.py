"""Training job events: filtered, ordered and paged as the v2 events endpoint documents."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from collector_plugin.simulator.protocol import (
    ApiOptions,
    BadRequest,
    Reply,
    Request,
    Route,
    int_param,
    json_reply,
    route,
)
from collector_plugin.simulator.scenario import Event, Scenario
from collector_plugin.simulator.training import find_job

EVENTS = "/v2/{project_id}/training-jobs/{id}/events"
EVENTS_MAX_LIMIT = 100
CHINA_TZ = timezone(timedelta(hours=8))


def iso_time(ms: int) -> str:
    """Event times as the documentation shows them: seconds precision, +08:00."""
    return datetime.fromtimestamp(ms / 1000, CHINA_TZ).isoformat(timespec="seconds")


class EventsApi:
    def __init__(self, scenario: Scenario, options: ApiOptions) -> None:
        self.scenario = scenario
        self.options = options

    def routes(self) -> list[Route]:
        return [route("GET", EVENTS, self.events)]

    def events(self, req: Request) -> Reply:
        job = find_job(self.scenario, req)
        if isinstance(job, Reply):
            return job
        q = req.query
        limit = int_param(q, "limit", 50)
        offset = int_param(q, "offset", 0)
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
        events = self._filtered(job.events, q, pattern)
        if order == "desc":
            events.reverse()
        first = offset * limit if self.options.has("events_page_offset") else offset
        page = events[first : first + limit]
        as_str = self.options.has("events_strings")
        body: dict[str, Any] = {
            "total": str(len(events)) if as_str else len(events),
            "limit": str(limit) if as_str else limit,
            "offset": str(offset) if as_str else offset,
            "order": order,
        }
        if has_start:
            body["start_time"] = iso_time(int_param(q, "start_time", 0))
            body["end_time"] = iso_time(int_param(q, "end_time", 0))
        body["events"] = [self._event(e) for e in page]
        return json_reply(body)

    @staticmethod
    def _filtered(events: list[Event], q: dict[str, str], pattern: str) -> list[Event]:
        level = (q.get("level") or "").lower()
        source = (q.get("source") or "").lower()
        has_start = bool(q.get("start_time"))
        start_ms = int_param(q, "start_time", 0)
        end_ms = int_param(q, "end_time", 0)
        return [
            e
            for e in events
            if (not level or e.level.lower() == level)
            and (not source or e.source.lower() == source)
            and (not pattern or pattern in e.message)
            and (not has_start or start_ms <= e.time_ms <= end_ms)
        ]

    def _event(self, e: Event) -> dict[str, Any]:
        k8s = "K8s" if self.options.has("events_k8s_lower") else "K8S"
        return {
            "time": iso_time(e.time_ms),
            "level": e.level,
            "message": e.message,
            "source": k8s if e.source.upper() == "K8S" else e.source,
        }
