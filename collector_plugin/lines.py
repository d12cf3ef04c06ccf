"""Pure line assembly: bytes in, complete lines out (owned by the log sources).

To be completed: see LineAssembler.
"""

from __future__ import annotations

from pydantic import Field

from collector_plugin.durations import Duration
from collector_plugin.source import SourceConfig

DEFAULT_MAX_LINE_BYTES = 262_144  # Loki's default max line size


class LineSourceConfig(SourceConfig):
    """Keys shared by sources that read logs as bytes and split them into lines."""

    flush_after: Duration = Field(
        default=5.0, description="Emit a partial last line once the log has not grown for this long."
    )
    max_line_bytes: int = Field(
        default=DEFAULT_MAX_LINE_BYTES, ge=64, description="Longer lines are split into continued records."
    )
    line_start_pattern: str | None = Field(
        default=None, description="Regex marking the first line of a multiline record (e.g. tracebacks)."
    )
