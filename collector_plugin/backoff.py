"""One backoff formula and one ``Retry-After`` parser for every retry loop of the receiver.

API calls, OBS reads, OTLP exports and failing targets all wait the same way: exponential growth
from ``initial`` up to ``maximum`` with jitter in the upper half (so a fleet does not retry in
step, and a wait is never much shorter than planned), and at least what the server asked for.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter; ``max_attempts`` counts the first try (0: unbounded)."""

    initial: float = 0.5
    maximum: float = 30.0
    max_attempts: int = 6

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before try ``attempt + 1``; never less than ``retry_after``.

        A server's ``Retry-After`` is honoured up to ten times ``maximum`` (a broken header must
        not park the receiver for a day).
        """
        cap = min(self.maximum, self.initial * 2.0 ** min(max(attempt, 1) - 1, 60))
        delay = random.uniform(cap / 2, cap)
        if retry_after is not None:
            delay = max(delay, min(retry_after, max(self.maximum, 1.0) * 10))
        return delay

    def exhausted(self, attempt: int) -> bool:
        """True once ``attempt`` tries were made and no further one is allowed."""
        return self.max_attempts > 0 and attempt >= self.max_attempts


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


__all__ = ["Backoff", "parse_retry_after"]
