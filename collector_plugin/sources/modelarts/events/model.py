"""The events API's answer, and events as the tracker sees them (time in ms, source normalised)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict

from collector_plugin.api import ResponseFormatError
from collector_plugin.sources.modelarts import endpoints
from collector_plugin.sources.modelarts.records import normalise_event_source

MAX_TIME_MS = (2**64 - 1) // 1_000_000


class RawEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    time: str | int | float
    level: str = ""
    message: str = ""
    source: str = ""


class EventPage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    total: int | None = None
    events: list[RawEvent] | None = None


def parse_event_time(value: str | int | float) -> int:
    """Epoch milliseconds from epoch ms (number or digits) or ISO 8601 (``+08:00``, ``Z``, naive = UTC)."""
    if isinstance(value, (int, float)):
        return _in_range(value)
    text = value.strip()
    if text.lstrip("-").isdigit():
        return _in_range(int(text))
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"unrecognised event time {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return _in_range(math.floor(moment.timestamp() * 1000 + 0.5))


def _in_range(ms: float) -> int:
    """Reject times an OTLP timestamp (uint64 ns) cannot hold, NaN and infinities included."""
    if not 0 <= ms <= MAX_TIME_MS:
        raise ValueError(f"event time {ms!r} ms is out of range")
    return int(ms)


@dataclass(frozen=True, slots=True)
class Event:
    """One event as read, with its time in epoch ms and its source normalised."""

    time_ms: int
    level: str
    source: str
    message: str

    @classmethod
    def of(cls, raw: RawEvent) -> Event:
        try:
            time_ms = parse_event_time(raw.time)
        except ValueError as err:
            raise ResponseFormatError(endpoints.EVENTS, "events.time", str(err)) from None
        return cls(time_ms, raw.level, normalise_event_source(raw.source), raw.message)

    def digest(self) -> str:
        """What tells this event apart from others at the same time (occurrence index aside)."""
        text = f"{self.level.strip().lower()}\x1f{self.source}\x1f{self.message}"
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


__all__ = ["Event", "EventPage", "RawEvent", "parse_event_time"]
