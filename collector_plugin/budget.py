"""The API budget: one learned, prioritised flow control per credential.

The Huawei API gateway refuses calls over a per-user limit it does not publish (HTTP 429 with
``APIG.0308`` "The request is over ratelimit,limit:8,time:1 second", or ``ModelArts.6101``). So
the configured ``rate_limit`` is only a ceiling; the real rate is learned:

* **Rate** (:class:`RateController`): a token bucket whose rate is cut multiplicatively on a
  throttle (once per congestion episode: refusals of calls admitted before the cut are the same
  episode) and raised additively (``increase`` calls/s per second) by successful calls that had to
  wait for a token, i.e. only while the budget is what limits us. A limit named in the message
  caps the rate at ``0.98 * (N - b + 1) / window`` with burst ``b = max(1, N // 10)``, so that no
  fixed gateway window of that length sees more than ``N`` calls; the cap expires after
  ``limit_ttl`` without new evidence so a raised quota is found again. ``Retry-After`` pauses
  every admission. Throttles in a row (no success between) add a doubling pause.
* **Order** (:class:`AdmissionQueue`): NEW (never polled) before NEWS (likely news) before IDLE
  (longest since its last poll first), by aging: a waiter enqueued at ``t`` ranks at
  ``t + delay(class)`` with delay 0 for NEW, ``aging`` for NEWS and, for IDLE,
  ``aging * (3 - min(idle, idle_span) / idle_span)``; earliest rank first. **Bound**: a waiter is admitted before every waiter enqueued more
  than ``3*aging`` seconds after it; so, without throttling, it waits at most
  ``3*aging + Q / rate`` seconds, ``Q`` being the most waiters queued meanwhile (one per target).
* :class:`BudgetCore` joins both as a pure state machine (the caller passes ``now``), which the
  tests drive with a simulated gateway; :class:`Budget` is its asyncio face for the client and
  the scheduler, with metrics and a :meth:`Budget.snapshot` for the status page.

A throttled call is not a failure of its target: :meth:`Budget.observe` returns True, and the
caller acquires again and retries without backing the target off.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collector_plugin.telemetry import Metrics

THROTTLE_CODES = frozenset({"APIG.0308", "ModelArts.6101"})
THROTTLE_QUIET = 30.0  # seconds without a refusal after which a throttling episode is over

log = logging.getLogger("collector_plugin.budget")
_EPS = 1e-6  # tokens; absorbs float error so a wake-up at the computed instant admits

_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_LIMIT_RE = re.compile(r"limit\s*[:=]\s*(\d+)\s*,\s*time\s*[:=]\s*(\d*)\s*(second|minute|hour|day)", re.IGNORECASE)


@dataclass(frozen=True)
class Tuning:
    """How the budget learns and orders; the defaults suit ModelArts' gateway."""

    aging: float = 5.0  # seconds between classes: the wait bound is 3 * aging (+ queue / rate)
    idle_span: float = 600.0  # IDLE waiters idle this long or longer rank first among IDLE
    increase: float = 0.1  # calls/s added per second of rate-limited success
    decrease: float = 0.7  # factor applied to the rate once per congestion episode
    limit_ttl: float = 600.0  # seconds a limit named by the gateway caps the rate without renewal
    max_pause: float = 300.0  # longest pause honoured from Retry-After or throttles in a row

    def __post_init__(self) -> None:
        problems = [
            f"budget.{name} must be > 0, got {getattr(self, name)!r}"
            for name in _POSITIVE
            if not getattr(self, name) > 0
        ]
        if not 0 < self.decrease < 1:
            problems.append(f"budget.decrease must lie in (0, 1), got {self.decrease!r}")
        if problems:
            raise ValueError("; ".join(problems))


_POSITIVE = ("aging", "idle_span", "increase", "limit_ttl", "max_pause")


class Priority(IntEnum):
    """Admission classes, most urgent first."""

    NEW = 0  # the target was never polled: fast coverage at start and after discovery
    NEWS = 1  # likely news: a growing log, a running job's events, a service update in progress
    IDLE = 2  # nothing expected: ordered by how long the target has waited since its last poll


@dataclass(frozen=True)
class Limit:
    """A gateway limit named in a throttle message: ``calls`` per ``window`` seconds."""

    calls: int
    window: float

    @property
    def burst(self) -> int:
        return max(1, self.calls // 10)

    @property
    def safe_rate(self) -> float:
        """A rate whose burst plus refill stays below ``calls + 1`` over any ``[t, t + window)``.

        So a fixed-window gateway never sees more than ``calls`` in one window (2 % margin for
        clock skew between us and the gateway).
        """
        return 0.98 * (self.calls - self.burst + 1) / self.window


def parse_limit(error_msg: str) -> Limit | None:
    """``"...over ratelimit,limit:8,time:1 second"`` -> ``Limit(8, 1.0)``; None when not named."""
    match = _LIMIT_RE.search(error_msg or "")
    if match is None:
        return None
    calls, count, unit = int(match.group(1)), int(match.group(2) or 1), match.group(3).lower()
    if calls <= 0 or count <= 0:
        return None
    return Limit(calls, count * _UNITS[unit])


def is_throttle(status: int, error_code: str = "") -> bool:
    """True for gateway flow control: HTTP 429, ``APIG.0308`` or ``ModelArts.6101``."""
    return status == 429 or error_code in THROTTLE_CODES


@dataclass(frozen=True)
class Permit:
    """One admitted call; hand it back to ``observe`` with the answer."""

    key: str
    priority: Priority
    admitted_at: float
    waited: float
    seq: int  # admission order; tells which congestion episode a refusal belongs to
    token_bound: bool  # had to wait for a token: its success is evidence the rate may rise


@dataclass(order=True)
class _Waiter:
    rank: float
    order: int
    key: str = field(compare=False)
    priority: Priority = field(compare=False)
    enqueued_at: float = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class AdmissionQueue:
    """Waiters by class with aging (see the module docstring for the order and its bound)."""

    def __init__(self, aging: float = Tuning.aging, idle_span: float = Tuning.idle_span) -> None:
        self.aging, self.idle_span = aging, idle_span
        self._heap: list[_Waiter] = []
        self._order = itertools.count()
        self.counts = dict.fromkeys(Priority, 0)

    @property
    def bound(self) -> float:
        """No waiter enqueued more than this many seconds after another is admitted before it."""
        return 3 * self.aging

    def rank(self, priority: Priority, now: float, since_last_poll: float | None) -> float:
        if priority is Priority.NEW:
            return now
        if priority is Priority.NEWS:
            return now + self.aging
        idle = min(max(since_last_poll or 0.0, 0.0), self.idle_span)
        return now + self.aging * (3 - idle / self.idle_span)

    def push(self, key: str, priority: Priority, now: float, since_last_poll: float | None = None) -> _Waiter:
        waiter = _Waiter(self.rank(priority, now, since_last_poll), next(self._order), key, priority, now)
        heapq.heappush(self._heap, waiter)
        self.counts[priority] += 1
        return waiter

    def cancel(self, waiter: _Waiter) -> None:
        """Forget a waiter that gave up (removed lazily when it reaches the head)."""
        if not waiter.cancelled:
            waiter.cancelled = True
            self.counts[waiter.priority] -= 1

    def __len__(self) -> int:
        return sum(self.counts.values())

    def pop(self) -> _Waiter | None:
        while self._heap:
            waiter = heapq.heappop(self._heap)
            if not waiter.cancelled:
                self.counts[waiter.priority] -= 1
                waiter.cancelled = True  # a later cancel() must not count it again
                return waiter
        return None


class RateController:
    """The learned token bucket: AIMD under a ceiling, named limits, Retry-After pauses."""

    def __init__(self, ceiling: float, burst: int, now: float, tuning: Tuning = Tuning()) -> None:
        if not ceiling > 0 or not math.isfinite(ceiling):
            raise ValueError(f"budget rate_limit must be a positive number of calls/s, got {ceiling!r}")
        if burst < 1:
            raise ValueError(f"budget burst must be >= 1, got {burst!r}")
        self.ceiling = float(ceiling)
        self.max_burst = burst
        self.min_rate = min(self.ceiling, 0.1)
        self.increase, self.decrease = tuning.increase, tuning.decrease
        self.limit_ttl, self.max_pause = tuning.limit_ttl, tuning.max_pause
        self.rate = self.ceiling
        self.limits: dict[float, tuple[Limit, float]] = {}  # window -> (limit, last seen)
        self.paused_until = now
        self.throttled = 0
        self._tokens = float(self.burst)
        self._last = now
        self._admitted = 0
        self._episode_seq = -1  # permits with seq <= this were admitted before the last cut
        self._streak = 0  # throttles since the last success
        self.share = 1  # replicas spending this credential's budget: each gets 1/share of every cap

    @property
    def burst(self) -> int:
        """The configured burst, within the named limits' bursts, else within a second's worth."""
        if self.limits:
            return min([self.max_burst] + [limit.burst for limit, _ in self.limits.values()])
        return min(self.max_burst, max(1, int(self.rate)))

    def cap(self, now: float) -> float:
        """The highest rate allowed now: the ceiling and every unexpired named limit."""
        for window, (_, seen) in list(self.limits.items()):
            if now - seen > self.limit_ttl:
                del self.limits[window]
        return min([self.ceiling] + [limit.safe_rate for limit, _ in self.limits.values()]) / self.share

    def set_share(self, replicas: int, now: float) -> None:
        """Spend 1/``replicas`` of the credential's budget: the gateway limits the user, not the pod."""
        self.share = max(1, replicas)
        self.rate = max(self.min_rate, min(self.rate, self.cap(now)))

    def _refill(self, now: float) -> None:
        start = max(self._last, self.paused_until)
        if now > start:
            self._tokens = min(float(self.burst), self._tokens + (now - start) * self.rate)
            self._last = now

    def try_take(self, now: float) -> tuple[int, bool] | None:
        """Take a token if one is there: (admission seq, whether it was the last one)."""
        if now < self.paused_until:
            return None
        self._refill(now)
        if self._tokens < 1 - _EPS:
            return None
        token_bound = self._tokens < 2 - _EPS
        self._tokens = max(0.0, self._tokens - 1)
        self._admitted += 1
        return self._admitted, token_bound

    def ready_at(self, now: float) -> float:
        """When the next token may be taken."""
        if now < self.paused_until:
            return self.paused_until
        self._refill(now)
        deficit = 1 - _EPS / 2 - self._tokens
        if deficit <= 0:
            return now
        return max(now + deficit / self.rate, math.nextafter(now, math.inf))  # time must move

    def on_success(self, permit: Permit, now: float) -> None:
        self._streak = 0
        if permit.token_bound and permit.seq > self._episode_seq:
            self._refill(now)
            self.rate = min(self.cap(now), self.rate + self.increase / max(self.rate, 1.0))

    def on_throttle(self, permit: Permit, now: float, error_msg: str, retry_after: float | None) -> None:
        self.throttled += 1
        limit = parse_limit(error_msg)
        if limit is not None:
            self.limits[limit.window] = (limit, now)
        if retry_after is not None and retry_after > 0:
            self._pause(now, min(retry_after, self.max_pause))
        if permit.seq <= self._episode_seq:
            return  # sent before the last cut: the same congestion episode
        self._streak += 1
        self._refill(now)
        cap = self.cap(now)
        cut = min(cap, self.rate * self.decrease) if self.rate <= cap else cap
        self.rate = max(min(self.min_rate, cap), cut)
        self._tokens = 0.0
        self._last = max(self._last, now)
        self._episode_seq = self._admitted
        if self._streak > 1:
            window = max([1.0, *self.limits])
            self._pause(now, min(2.0 ** (self._streak - 2), window, self.max_pause))

    def _pause(self, now: float, seconds: float) -> None:
        self._refill(now)
        self.paused_until = max(self.paused_until, now + seconds)
        self._tokens = 0.0


@dataclass(frozen=True)
class Snapshot:
    """What the status page shows about a budget."""

    rate: float
    ceiling: float
    burst: int
    known_limits: tuple[Limit, ...]
    queued: dict[str, int]
    paused_for: float  # seconds until admissions resume (0: not paused)
    throttled: int


class BudgetCore:
    """Queue and rate controller as a pure state machine: every method takes ``now``."""

    def __init__(self, rate_limit: float, burst: int, now: float, tuning: Tuning = Tuning()) -> None:
        self.queue = AdmissionQueue(tuning.aging, tuning.idle_span)
        self.control = RateController(rate_limit, burst, now, tuning)

    def enqueue(self, key: str, priority: Priority, now: float, since_last_poll: float | None = None) -> _Waiter:
        return self.queue.push(key, Priority(priority), now, since_last_poll)

    def admit_due(self, now: float) -> list[tuple[_Waiter, Permit]]:
        """Admit, best rank first, as many waiters as there are tokens now."""
        admitted: list[tuple[_Waiter, Permit]] = []
        while len(self.queue):
            taken = self.control.try_take(now)
            if taken is None:
                break
            waiter = self.queue.pop()
            if waiter is None:
                break
            seq, token_bound = taken
            waited = max(0.0, now - waiter.enqueued_at)
            permit = Permit(waiter.key, waiter.priority, now, waited, seq, token_bound or waited > 0)
            admitted.append((waiter, permit))
        return admitted

    def next_event(self, now: float) -> float | None:
        """When a waiter may next be admitted; None with nobody waiting."""
        return self.control.ready_at(now) if len(self.queue) else None

    def observe(
        self,
        permit: Permit,
        now: float,
        status: int,
        error_code: str = "",
        error_msg: str = "",
        retry_after: float | None = None,
    ) -> bool:
        """Learn from an answer; True when the call was throttled and should be retried."""
        if is_throttle(status, error_code):
            self.control.on_throttle(permit, now, error_msg, retry_after)
            return True
        if 0 < status < 400:
            self.control.on_success(permit, now)
        return False

    def snapshot(self, now: float) -> Snapshot:
        control = self.control
        control.cap(now)  # drop expired limits
        return Snapshot(
            rate=control.rate,
            ceiling=control.ceiling,
            burst=control.burst,
            known_limits=tuple(limit for limit, _ in control.limits.values()),
            queued={p.name: n for p, n in self.queue.counts.items()},
            paused_for=max(0.0, control.paused_until - now),
            throttled=control.throttled,
        )


class Budget:
    """The process-wide budget of one credential, for asyncio callers.

    ``clock`` and ``sleep`` are injectable so tests run on virtual time. Use::

        permit = await budget.acquire(Priority.NEWS, key, since_last_poll=idle)
        response = await send()
        if budget.observe(permit, response.status_code, code, msg, retry_after):
            ...  # throttled: acquire again and retry; not a failure of the target
    """

    def __init__(
        self,
        rate_limit: float,
        burst: int,
        *,
        name: str = "default",
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tuning: Tuning = Tuning(),
    ) -> None:
        self.name = name
        self._clock, self._sleep = clock, sleep
        self._core = BudgetCore(rate_limit, burst, clock(), tuning)
        self._metrics = metrics
        self._futures: dict[int, asyncio.Future[Permit]] = {}
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._episode_started: float | None = None  # when the current throttling episode began
        self._episode_refusals = 0
        self._last_refusal = 0.0
        self._publish()

    @property
    def bound(self) -> float:
        """Seconds of aging after which no later waiter overtakes an earlier one."""
        return self._core.queue.bound

    async def acquire(self, priority: Priority, key: str, *, since_last_poll: float | None = None) -> Permit:
        """Wait for this call's turn; ``permit.waited`` is the time spent waiting."""
        loop = asyncio.get_running_loop()
        waiter = self._core.enqueue(key, priority, self._clock(), since_last_poll)
        future: asyncio.Future[Permit] = loop.create_future()
        self._futures[waiter.order] = future
        self._dispatch()
        if not future.done():
            self._start_pump()
        try:
            return await future
        except asyncio.CancelledError:
            self._futures.pop(waiter.order, None)
            self._core.queue.cancel(waiter)
            self._publish()
            self._wake.set()
            raise

    def observe(
        self,
        permit: Permit,
        status: int,
        error_code: str = "",
        error_msg: str = "",
        retry_after: float | None = None,
    ) -> bool:
        """Learn from one answer; True when it was throttled: retry it through the budget."""
        now = self._clock()
        was_paused = self._core.control.paused_until > now
        throttled = self._core.observe(permit, now, status, error_code, error_msg, retry_after)
        if throttled and self._metrics is not None:
            self._metrics.budget_throttled.labels(self.name, error_code or str(status)).inc()
        self._log_throttling(now, throttled, was_paused, error_code or str(status), retry_after)
        self._publish()
        self._wake.set()  # a pause or a new rate changes when the next waiter is due
        return throttled

    def snapshot(self) -> Snapshot:
        return self._core.snapshot(self._clock())

    def set_share(self, replicas: int) -> None:
        """Spend 1/``replicas`` of the credential's budget (see :meth:`RateController.set_share`)."""
        if replicas != self._core.control.share:
            self._core.control.set_share(replicas, self._clock())
            self._publish()
            self._wake.set()

    def _log_throttling(
        self, now: float, throttled: bool, was_paused: bool, code: str, retry_after: float | None
    ) -> None:
        """One line when an episode begins, one per Retry-After pause, one when it is over."""
        control = self._core.control
        fields = {"budget": self.name, "rate": round(control.rate, 3), "ceiling": control.ceiling}
        if throttled:
            if self._episode_started is None:
                self._episode_started, self._episode_refusals = now, 0
                log.warning(
                    "API throttling begun: %s refused a call; slowing to %.3g calls/s",
                    code,
                    control.rate,
                    extra={**fields, "error_code": code},
                )
            self._episode_refusals += 1
            self._last_refusal = now
            if retry_after and not was_paused:
                log.warning("API asked to wait (Retry-After %gs): pausing every call", retry_after, extra=fields)
        elif self._episode_started is not None and now - self._last_refusal >= THROTTLE_QUIET:
            log.info(
                "API throttling ended after %.0fs (%d calls refused, retried); rate %.3g calls/s",
                now - self._episode_started,
                self._episode_refusals,
                control.rate,
                extra={**fields, "refused": self._episode_refusals},
            )
            self._episode_started = None

    async def aclose(self) -> None:
        """Stop the admission task (waiters still queued stay queued)."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None

    def _dispatch(self) -> None:
        for waiter, permit in self._core.admit_due(self._clock()):
            future = self._futures.pop(waiter.order, None)
            if future is not None and not future.done():
                future.set_result(permit)
            if self._metrics is not None:
                self._metrics.budget_wait.labels(self.name, permit.priority.name).observe(permit.waited)
        self._publish()

    def _start_pump(self) -> None:
        self._wake.set()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run_pump(), name=f"budget-{self.name}")

    async def _run_pump(self) -> None:
        """Admit waiters as tokens come; ends when nobody waits (restarted by the next acquire)."""
        while True:
            self._wake.clear()
            self._dispatch()
            now = self._clock()
            due = self._core.next_event(now)
            if due is None:
                return
            if due > now:
                await self._sleep_or_wake(due - now)

    async def _sleep_or_wake(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()

    def _publish(self) -> None:
        if self._metrics is None:
            return
        self._metrics.budget_rate.labels(self.name).set(self._core.control.rate)
        for priority, count in self._core.queue.counts.items():
            self._metrics.budget_queued.labels(self.name, priority.name).set(count)


__all__ = [
    "THROTTLE_CODES",
    "AdmissionQueue",
    "Budget",
    "BudgetCore",
    "Limit",
    "Permit",
    "Priority",
    "RateController",
    "Snapshot",
    "Tuning",
    "is_throttle",
    "parse_limit",
]


@dataclass(frozen=True)
class CallTag:
    """Who is calling: the scheduler sets it around a poll, the client reads it to queue the call."""

    priority: Priority = Priority.IDLE
    key: str = ""
    since_last_poll: float | None = None


_IDLE_CALL = CallTag()
CALL: ContextVar[CallTag] = ContextVar("modelarts_receiver_call", default=_IDLE_CALL)
