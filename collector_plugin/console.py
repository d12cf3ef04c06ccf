"""A transport that prints records instead of sending them: for ``demo`` and ``tail``.

``tail`` prints its records before they are encoded, so the OTLP half (protobuf, the decoder)
is imported only by the transport that receives encoded batches.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collector_plugin.records import Record

_COLORS = {0: "\x1b[37m", 5: "\x1b[90m", 9: "\x1b[32m", 13: "\x1b[33m", 17: "\x1b[31m", 21: "\x1b[1;31m"}
_RESET = "\x1b[0m"
_DIM = "\x1b[2m"


def _severity_bucket(number: int) -> int:
    for bucket in (21, 17, 13, 9, 5):
        if number >= bucket:
            return bucket
    return 0


_SHOWN = (
    "modelarts.training_job.name",
    "modelarts.training_job.id",
    "modelarts.task.id",
    "log.file.name",
    "modelarts.event.source",
    "modelarts.service.name",
)


def format_line(
    *,
    time_ns: int,
    severity_number: int,
    severity_text: str,
    attributes: Mapping[str, Any],
    body: Any,
    event_name: str,
    service: str,
    color: bool,
) -> str:
    """One readable line: time, severity, origin, body."""
    when = dt.datetime.fromtimestamp(time_ns / 1e9, tz=dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    level = severity_text or "-"
    origin = next((str(attributes[k]) for k in _SHOWN if k in attributes), service)
    if "log.file.name" in attributes:
        job = attributes.get("modelarts.training_job.id")
        origin = f"job {job} v{attributes.get('modelarts.training_job.version.id')} {attributes['log.file.name']}"
    if "modelarts.task.id" in attributes:
        job = attributes.get("modelarts.training_job.name") or attributes.get("modelarts.training_job.id")
        origin = f"{job}/{attributes['modelarts.task.id']}"
    text = body if isinstance(body, str) else repr(body)
    tag = f"[{event_name}] " if event_name else ""
    if not color:
        return f"{when} {level:<7} {origin} {tag}{text}"
    c = _COLORS[_severity_bucket(severity_number)]
    return f"{_DIM}{when}{_RESET} {c}{level:<7}{_RESET} \x1b[36m{origin}{_RESET} {tag}{text}"


def format_record(record: Record, *, color: bool) -> str:
    """Format one of our records (``tail`` prints them without encoding them)."""
    return format_line(
        time_ns=record.time_ns or record.observed_ns,
        severity_number=record.severity_number,
        severity_text=record.severity_text,
        attributes=record.all_attributes(),
        body=record.body,
        event_name=record.event_name,
        service=str(record.resource.as_dict().get("service.name", "")),
        color=color,
    )


def format_proto_record(record: Any, service: str, *, color: bool) -> str:
    """Format a decoded OTLP LogRecord (what the console transport receives)."""
    from collector_plugin.otlp import any_value_to_python

    return format_line(
        time_ns=record.time_unix_nano or record.observed_time_unix_nano,
        severity_number=record.severity_number,
        severity_text=record.severity_text,
        attributes={kv.key: any_value_to_python(kv.value) for kv in record.attributes},
        body=any_value_to_python(record.body),
        event_name=record.event_name,
        service=service,
        color=color,
    )


class ConsoleTransport:
    """Implements the exporter's Transport by decoding each batch and printing its records."""

    def __init__(self, stream: TextIO | None = None, *, color: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.color = self.stream.isatty() if color is None else color
        self.printed = 0

    async def send(self, payload: bytes, nrecords: int) -> int:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

        request = ExportLogsServiceRequest.FromString(payload)
        lines = []
        for rl in request.resource_logs:
            service = next((kv.value.string_value for kv in rl.resource.attributes if kv.key == "service.name"), "")
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    lines.append(format_proto_record(record, service, color=self.color))
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        self.printed += len(lines)
        return 0

    async def close(self) -> None:
        self.stream.flush()
