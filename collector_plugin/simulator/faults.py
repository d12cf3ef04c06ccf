"""Fault injection: make chosen requests fail the way a real gateway or server does.

A rule matches a request path by regex and fires ``times`` times (``None``: forever). Rules are
tried in the order they were added; the first one with firings left answers the request.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

DEFAULT_ERROR_CODES = {429: "APIG.0308", 401: "APIG.0301", 403: "APIG.0301"}


@dataclass
class FaultRule:
    """What to do to a matching request.

    ``status`` None with no ``body`` and no ``reset`` only delays (``delay`` seconds), then the
    request is answered normally. ``body`` replaces the answer (e.g. an HTML error page: a
    malformed body). ``reset`` closes the connection without answering.
    """

    pattern: re.Pattern[str]
    status: int | None = 429
    retry_after: float | str | None = None
    times: int | None = 1
    error_code: str | None = None
    delay: float | None = None
    body: bytes | None = None
    reset: bool = False
    method: str | None = None
    fired: int = 0

    @property
    def answers(self) -> bool:
        """True when the rule replaces the normal answer instead of only delaying it."""
        return self.reset or self.body is not None or self.status is not None

    def error_body(self) -> bytes:
        if self.body is not None:
            return self.body
        status = self.status or 500
        code = self.error_code or DEFAULT_ERROR_CODES.get(status, "ModelArts.0001")
        msg = "The throttling threshold has been reached" if status == 429 else "Simulated fault"
        return f'{{"error_code": "{code}", "error_msg": "{msg}"}}'.encode()


class FaultInjector:
    """Thread-safe, ordered list of fault rules consulted by every request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []

    def add(
        self,
        path_regex: str,
        *,
        status: int | None = 429,
        retry_after: float | str | None = None,
        times: int | None = 1,
        error_code: str | None = None,
        delay: float | None = None,
        body: bytes | str | None = None,
        reset: bool = False,
        method: str | None = None,
    ) -> FaultRule:
        rule = FaultRule(
            pattern=re.compile(path_regex),
            status=status,
            retry_after=retry_after,
            times=times,
            error_code=error_code,
            delay=delay,
            body=body.encode() if isinstance(body, str) else body,
            reset=reset,
            method=method.upper() if method else None,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def slow(self, path_regex: str, seconds: float, times: int | None = 1) -> FaultRule:
        """Delay matching answers by ``seconds``, then answer normally."""
        return self.add(path_regex, status=None, delay=seconds, times=times)

    def throttle(self, path_regex: str, retry_after: float | str | None = 1, times: int | None = 1) -> FaultRule:
        return self.add(path_regex, status=429, retry_after=retry_after, times=times)

    def error(
        self, path_regex: str, status: int = 503, times: int | None = 1, error_code: str | None = None
    ) -> FaultRule:
        return self.add(path_regex, status=status, times=times, error_code=error_code)

    def malformed(
        self,
        path_regex: str,
        body: bytes | str = b"<html><body>502 Bad Gateway</body></html>",
        *,
        status: int = 200,
        times: int | None = 1,
    ) -> FaultRule:
        """Answer with a body that is not the promised JSON (a proxy's HTML page, a cut-off body)."""
        return self.add(path_regex, status=status, body=body, times=times)

    def reset(self, path_regex: str, times: int | None = 1) -> FaultRule:
        """Close the connection without answering."""
        return self.add(path_regex, reset=True, times=times)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    @property
    def pending(self) -> int:
        """Firings left across all rules (an unlimited rule counts as one)."""
        with self._lock:
            return sum(1 if r.times is None else r.times for r in self._rules if r.times != 0)

    def match(self, method: str, path: str) -> FaultRule | None:
        """The rule to apply to this request, counting one firing; None when none applies."""
        with self._lock:
            for rule in self._rules:
                if rule.times == 0 or (rule.method and rule.method != method):
                    continue
                if rule.pattern.search(path):
                    if rule.times is not None:
                        rule.times -= 1
                    rule.fired += 1
                    return rule
        return None
