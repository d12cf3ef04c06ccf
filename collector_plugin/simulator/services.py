"""Inference services: the list and each real-time or edge service's update history."""

from __future__ import annotations

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
from collector_plugin.simulator.scenario import Scenario, Service, Update

SERVICES = "/v1/{project_id}/services"
SERVICE_LOGS = "/v1/{project_id}/services/{service_id}/logs"


def _service_config(config: dict[str, Any], as_str: bool) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    if as_str and "weight" in out:
        out["weight"] = str(out["weight"])
    return out


class ServicesApi:
    def __init__(self, scenario: Scenario, options: ApiOptions) -> None:
        self.scenario = scenario
        self.options = options

    def routes(self) -> list[Route]:
        return [route("GET", SERVICES, self.services), route("GET", SERVICE_LOGS, self.service_logs)]

    def services(self, req: Request) -> Reply:
        q = req.query
        page = int_param(q, "offset", 0)
        limit = int_param(q, "limit", 1000)
        if page < 0 or limit < 1:
            raise BadRequest("offset must be >= 0 and limit >= 1")
        infer_type = q.get("infer_type")
        name = q.get("service_name")
        status = q.get("status")
        services = [
            s
            for s in self.scenario.services
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
                    {
                        "service_id": s.id,
                        "service_name": s.name,
                        "infer_type": s.infer_type,
                        "status": s.status,
                        "update_time": str(s.update_time) if self.options.has("service_strings") else s.update_time,
                    }
                    for s in chosen
                ],
            }
        )

    def service_logs(self, req: Request) -> Reply:
        service = self.scenario.find_service(req.params["service_id"])
        if service is None:
            return error_reply(404, "ModelArts.3502", f"Service {req.params['service_id']} not found.")
        if service.infer_type not in ("real-time", "edge"):
            return error_reply(400, "ModelArts.3520", "Update logs exist only for real-time and edge services.")
        with self.scenario.lock:
            logs = [self._entry(service, update) for update in service.updates]
        return json_reply({"service_id": service.id, "service_name": service.name, "logs": logs})

    def _entry(self, service: Service, update: Update) -> dict[str, Any]:
        as_str = self.options.has("service_strings")
        entry: dict[str, Any] = {
            "update_time": str(update.update_time) if as_str else update.update_time,
            "result": update.result,
            "config": [_service_config(c, as_str) for c in update.config],
        }
        if service.infer_type == "edge":
            entry["success_num"] = update.success_num or 0
            entry["failed_num"] = update.failed_num or 0
            entry["result_detail"] = [dict(d) for d in update.result_detail or []]
        return entry
