"""Gateway flow control, as Huawei's API Gateway (APIG) applies it in front of ModelArts.

Each credential (AK, or IAM token) may make ``calls`` API calls per second or per minute, over a
sliding window; a call over the limit gets 429 ``APIG.0308`` and ``Retry-After``: the whole
seconds until the oldest call in the window leaves it. OBS downloads do not pass the gateway.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from collector_plugin.simulator.protocol import Reply, json_reply

PERIODS = {"second": 1.0, "minute": 60.0}
_UNITS = {"s": "second", "sec": "second", "second": "second", "m": "minute", "min": "minute", "minute": "minute"}
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class FlowLimit:
    """At most ``calls`` calls per ``per`` (``"second"`` or ``"minute"``) for each credential."""

    calls: int
    per: str = "second"

    def __post_init__(self) -> None:
        if self.calls < 1:
            raise ValueError(f"flow limit: calls must be >= 1, got {self.calls}")
        if self.per not in PERIODS:
            raise ValueError(f"flow limit: per must be 'second' or 'minute', got {self.per!r}")

    @property
    def period(self) -> float:
        return PERIODS[self.per]

    @classmethod
    def parse(cls, spec: str) -> FlowLimit:
        """``"10/s"``, ``"10/second"``, ``"600/min"`` or ``"600/minute"``."""
        m = _SPEC.match(spec.lower())
        unit = _UNITS.get(m.group(2)) if m else None
        if m is None or unit is None:
            raise ValueError(f"flow limit {spec!r}: expected CALLS/second or CALLS/minute, e.g. 10/s or 600/min")
        return cls(int(m.group(1)), unit)


@dataclass(frozen=True)
class CallCount:
    """Calls to one endpoint that the gateway let through (``served``) or refused with 429."""

    served: int = 0
    refused: int = 0


def over_limit(limit: FlowLimit, retry_after: int) -> Reply:
    body = {
        "error_code": "APIG.0308",
        "error_msg": f"The request is over ratelimit,limit:{limit.calls},time:1 {limit.per}",
    }
    return json_reply(body, 429, headers={"Retry-After": str(retry_after)})


class Gateway:
    """Admits or refuses API calls per credential and counts both per endpoint.

    ``limit`` may be changed (or set to None: no limit) while the simulator runs.
    """

    def __init__(self, limit: FlowLimit | None, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.clock = clock
        self._windows: dict[str, deque[float]] = {}
        self._served: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._lock = threading.Lock()

    def admit(self, credential: str, endpoint: str) -> Reply | None:
        """None when the call may go on (it is counted as served), else the 429 to send."""
        limit = self.limit
        with self._lock:
            if limit is not None:
                now = self.clock()
                window = self._windows.setdefault(credential, deque())
                while window and window[0] <= now - limit.period:
                    window.popleft()
                if len(window) >= limit.calls:
                    self._refused[endpoint] += 1
                    return over_limit(limit, max(1, math.ceil(window[0] + limit.period - now)))
                window.append(now)
            self._served[endpoint] += 1
            return None

    def pass_through(self, endpoint: str) -> None:
        """Count a call that does not go through flow control (IAM, OBS)."""
        with self._lock:
            self._served[endpoint] += 1

    def counts(self) -> dict[str, CallCount]:
        """Per endpoint template: calls served and refused since the start (or the last reset)."""
        with self._lock:
            names = set(self._served) | set(self._refused)
            return {n: CallCount(self._served[n], self._refused[n]) for n in sorted(names)}

    def reset_counts(self) -> None:
        """Start counting again; the flow-control windows are kept (the gateway did not restart)."""
        with self._lock:
            self._served.clear()
            self._refused.clear()
