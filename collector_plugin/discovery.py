"""Finding targets through the API: training jobs by phase and name, their tasks, services.

To be completed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from collector_plugin.durations import Duration

DEFAULT_PHASES = ("Running", "Pending")


class DiscoveryConfig(BaseModel):
    """``discovery:`` under a source: find targets through the API instead of listing them."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    interval: Duration = Field(default=60.0, description="How often the target list is refreshed.")
    phases: list[str] = Field(default_factory=lambda: list(DEFAULT_PHASES))
    name_pattern: str | None = Field(default=None, description="Regex a job or service name must match.")
