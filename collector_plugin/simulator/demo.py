"""The one receiver config that reads everything a simulator serves: for ``demo`` and ``simulate``.

Sources find their targets by discovery (jobs in any phase, real-time and edge services), the v1
job versions are listed, and polling is fast, so a first look shows records within seconds.
"""

from __future__ import annotations

from typing import Any

import yaml

from collector_plugin.simulator.server import Simulator

DEMO_PHASES = ["Running", "Pending", "Completed", "Failed"]
STANDALONE_EXPORTER = {"protocol": "http/protobuf", "endpoint": "http://127.0.0.1:4318"}


def receiver_config(
    sim: Simulator,
    *,
    checkpoint_path: str = "./checkpoints.db",
    exporter: dict[str, Any] | None = None,
    metrics_listen: str = "",
) -> dict[str, Any]:
    """A receiver config (as parsed YAML) for ``sim``; ``exporter`` adds to the batch settings."""
    fast = {"poll_interval": "1s", "max_poll_interval": "5s"}
    discover_jobs = {"enabled": True, "interval": "5s", "phases": list(DEMO_PHASES)}
    sources: dict[str, Any] = {
        "training_task_logs": {**fast, "start_at": "beginning", "flush_after": "2s", "discovery": discover_jobs},
        "training_job_events": {**fast, "discovery": dict(discover_jobs)},
        "service_update_logs": {**fast, "discovery": {"enabled": True, "interval": "5s"}},
    }
    v1_jobs = [{"job_id": v.job_id, "version_id": v.version_id, "log_files": []} for v in sim.scenario.v1_jobs]
    if v1_jobs:
        sources["training_job_logs_v1"] = {**fast, "start_at": "beginning", "jobs": v1_jobs}
    return {
        "modelarts": {
            "region": "sim-local-1",
            "endpoint": sim.url,
            "project_id": sim.project_id,
            "auth": {"ak": sim.ak, "sk": sim.sk},
        },
        "sources": sources,
        "exporter": {**(exporter or {}), "batch": {"max_delay": "250ms"}},
        "checkpoint": {"path": checkpoint_path},
        "telemetry": {"listen": metrics_listen, "log_level": "warning", "log_format": "text"},
        "shutdown": {"grace_period": "5s"},
    }


def receiver_yaml(sim: Simulator) -> str:
    """:func:`receiver_config` as YAML to save, exporting over OTLP/HTTP to a local collector."""
    return yaml.safe_dump(receiver_config(sim, exporter=dict(STANDALONE_EXPORTER)), sort_keys=False).rstrip()
