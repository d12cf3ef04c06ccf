"""The API budget: learned rate against a simulated gateway, priorities with bounded waits, pauses.

Everything runs on virtual time: the pure :class:`BudgetCore` is driven event by event, and the
asyncio :class:`Budget` gets a fake clock whose sleep advances it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_plugin.budget import (
    Budget,
    BudgetCore,
    Limit,
    Permit,
    Priority,
    Tuning,
    is_throttle,
    parse_limit,
)
from collector_plugin.telemetry import Metrics


@dataclass
class Gateway:
    """API gateway flow control: fixed 1 s and 60 s windows; refused calls do not count."""

    per_second: int
    per_minute: int | None = None
    error_code: str = "APIG.0308"
    names_limit: bool = True
    seconds: Counter[int] = field(default_factory=Counter)
    minutes: Counter[int] = field(default_factory=Counter)

    def call(self, now: float) -> tuple[int, str, str]:
        second, minute = math.floor(now), math.floor(now / 60)
        if self.seconds[second] >= self.per_second:
            return self._refuse(self.per_second, "1 second")
        if self.per_minute is not None and self.minutes[minute] >= self.per_minute:
            return self._refuse(self.per_minute, "1 minute")
        self.seconds[second] += 1
        self.minutes[minute] += 1
        return 200, "", ""

    def _refuse(self, limit: int, window: str) -> tuple[int, str, str]:
        if not self.names_limit:
            return 429, self.error_code, "Flow control: too many requests"
        return 429, self.error_code, f"The request is over ratelimit,limit:{limit},time:{window}"


@dataclass
class Run:
    calls: list[tuple[float, bool]]  # (time, accepted)

    def window(self, start: float, end: float) -> tuple[int, int]:
        inside = [ok for t, ok in self.calls if start <= t < end]
        return sum(inside), len(inside) - sum(inside)


def saturate(core: BudgetCore, gateway: Gateway, start: float, end: float, targets: int = 30) -> Run:
    """From ``start`` to ``end`` every target calls again as soon as it was answered (no latency)."""
    now = start
    for i in range(targets):
        core.enqueue(f"job-{i}", Priority.NEWS, now)
    calls: list[tuple[float, bool]] = []
    while now < end:
        for waiter, permit in core.admit_due(now):
            status, code, msg = gateway.call(now)
            core.observe(permit, now, status, code, msg)
            calls.append((now, status == 200))
            core.enqueue(waiter.key, Priority.NEWS, now)
        due = core.next_event(now)
        assert due is not None and due >= now
        now = due
    while core.queue.pop() is not None:  # the targets stop
        pass
    return Run(calls)


def admit_one(core: BudgetCore, now: float, key: str = "a") -> Permit:
    core.enqueue(key, Priority.NEWS, now)
    [(_, permit)] = core.admit_due(now)
    return permit


@pytest.mark.parametrize(
    ("limits", "capacity"),
    [
        ({"per_second": 8}, 8.0),
        ({"per_second": 8, "per_minute": 300}, 5.0),
        ({"per_second": 3, "per_minute": 150}, 2.5),
        ({"per_second": 8, "error_code": "ModelArts.6101", "names_limit": False}, 8.0),
        ({"per_second": 4, "names_limit": False}, 4.0),
    ],
    ids=["8/s named", "8/s+300/min named", "3/s+150/min named", "8/s unnamed 6101", "4/s unnamed 429"],
)
def test_learned_rate_converges_to_the_gateway_limit(limits: dict[str, Any], capacity: float) -> None:
    """Ceiling 20/s, burst 40 (today's defaults) against a lower gateway limit, 30 busy targets."""
    gateway = Gateway(**limits)
    core = BudgetCore(20, 40, 0.0)
    run = saturate(core, gateway, 0, 1800)
    accepted, refused = run.window(300, 1800)  # after convergence, across named limits expiring
    assert refused / (accepted + refused) <= 0.05
    assert accepted / (capacity * 1500) >= 0.80
    assert core.control.rate <= 20


def test_a_named_limit_sets_rate_and_burst_at_once() -> None:
    core = BudgetCore(20, 40, 0.0)
    permit = admit_one(core, 0.0)
    assert core.observe(permit, 0.0, 429, "APIG.0308", "The request is over ratelimit,limit:120,time:1 minute")
    snap = core.snapshot(0.0)
    assert snap.known_limits == (Limit(120, 60.0),)
    assert snap.burst == 12
    assert snap.rate == pytest.approx(0.98 * (120 - 12 + 1) / 60)
    assert snap.throttled == 1


def test_replicas_split_the_ceiling_and_every_named_limit() -> None:
    """The gateway limits the credential: N replicas each spend 1/N of what one would."""
    core = BudgetCore(20, 40, 0.0)
    core.control.set_share(4, 0.0)
    assert core.control.cap(0.0) == pytest.approx(5.0)
    assert core.snapshot(0.0).rate <= 5.0
    permit = admit_one(core, 0.0)
    assert core.observe(permit, 0.0, 429, "APIG.0308", "The request is over ratelimit,limit:120,time:1 minute")
    named = 0.98 * (120 - 12 + 1) / 60
    assert core.snapshot(0.0).rate == pytest.approx(named / 4)
    core.control.set_share(1, 0.0)  # the others left: the whole limit is ours again, probed up to
    assert core.control.cap(0.0) == pytest.approx(named)


def test_a_named_limit_expires_and_the_rate_probes_up_additively() -> None:
    core = BudgetCore(20, 40, 0.0, Tuning(limit_ttl=100.0))
    gateway = Gateway(per_second=8)
    run = saturate(core, gateway, 0, 90)
    assert core.control.rate == pytest.approx(0.98 * 8)  # capped below the named 8/s, no probing
    assert run.window(5, 90)[1] == 0
    gateway.per_second = 100  # the quota was raised
    rates = []
    for start in range(90, 160, 10):
        saturate(core, gateway, start, start + 10)
        rates.append(core.control.rate)
    assert rates[0] == pytest.approx(0.98 * 8)  # the named limit still holds until t=100
    assert rates == sorted(rates) and rates[-1] > 9
    steps = [b - a for a, b in itertools.pairwise(rates)]
    assert all(0.5 <= step <= 1.1 for step in steps[1:])  # additive: ~0.1 calls/s more each second


def test_concurrent_refusals_cut_the_rate_once() -> None:
    core = BudgetCore(10, 10, 0.0)
    for i in range(10):
        core.enqueue(f"t{i}", Priority.NEWS, 0.0)
    permits = [p for _, p in core.admit_due(0.0)]
    assert len(permits) == 10
    for permit in permits:
        assert core.observe(permit, 0.0, 429, "ModelArts.6101", "")
    assert core.control.rate == pytest.approx(7.0)
    core.enqueue("late", Priority.NEWS, 0.0)
    due = core.next_event(0.0)
    assert due is not None
    [(_, late)] = core.admit_due(due)
    core.observe(late, due, 429, "ModelArts.6101", "")  # sent after the cut: a new episode
    assert core.control.rate == pytest.approx(4.9)


def test_other_errors_neither_cut_nor_ask_for_a_retry() -> None:
    core = BudgetCore(10, 10, 0.0)
    permit = admit_one(core, 0.0)
    assert core.observe(permit, 0.0, 500, "ModelArts.0001", "internal") is False
    assert core.observe(permit, 0.0, 404, "ModelArts.0002", "no such job") is False
    assert core.control.rate == 10


@pytest.mark.parametrize(
    ("message", "limit"),
    [
        ("The request is over ratelimit,limit:8,time:1 second", Limit(8, 1.0)),
        ("The request is over ratelimit,limit:300,time:1 minute", Limit(300, 60.0)),
        ("over ratelimit, limit: 5, time: 2 minutes", Limit(5, 120.0)),
        ("LIMIT:1000,TIME:1 HOUR", Limit(1000, 3600.0)),
        ("The request is over ratelimit", None),
        ("limit:0,time:1 second", None),
        ("", None),
    ],
)
def test_parse_limit(message: str, limit: Limit | None) -> None:
    assert parse_limit(message) == limit


@given(st.text(max_size=200))
def test_parse_limit_never_raises_and_names_a_positive_window(message: str) -> None:
    limit = parse_limit(message)
    assert limit is None or (limit.calls > 0 and limit.window > 0)


@settings(max_examples=40, deadline=None)
@given(calls=st.integers(1, 400), per_minute=st.booleans(), phase=st.floats(0, 0.99))
def test_a_named_limit_is_never_exceeded_in_a_fixed_window(calls: int, per_minute: bool, phase: float) -> None:
    """Learn the limit from one refusal, then a full bucket plus refill fits every window."""
    gateway = Gateway(per_second=calls) if not per_minute else Gateway(per_second=10**6, per_minute=calls)
    core = BudgetCore(1000, 1000, 0.0)
    window = "1 minute" if per_minute else "1 second"
    core.observe(admit_one(core, 0.0), 0.0, 429, "APIG.0308", f"over ratelimit,limit:{calls},time:{window}")
    idle_until = (60 if per_minute else 1) * (1 + phase)  # the bucket fills while nobody calls
    run = saturate(core, gateway, idle_until, idle_until + (240 if per_minute else 4))
    accepted, refused = run.window(0, math.inf)
    assert refused == 0
    assert accepted >= 0.75 * calls * (4 - 1)


def test_is_throttle() -> None:
    assert is_throttle(429)
    assert is_throttle(400, "APIG.0308")
    assert is_throttle(503, "ModelArts.6101")
    assert not is_throttle(503, "ModelArts.0001")
    assert not is_throttle(200)


@pytest.mark.parametrize(
    ("rate_limit", "burst", "word"), [(0, 1, "rate_limit"), (math.nan, 1, "rate_limit"), (5, 0, "burst")]
)
def test_bad_settings_are_named(rate_limit: float, burst: int, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        BudgetCore(rate_limit, burst, 0.0)


def test_bad_tuning_names_every_problem() -> None:
    with pytest.raises(ValueError, match=r"budget\.aging must be > 0.*budget\.decrease must lie in \(0, 1\)"):
        Tuning(aging=0, decrease=1.0)


def test_a_named_limit_below_the_floor_still_caps_the_rate() -> None:
    core = BudgetCore(20, 40, 0.0)
    now = 0.0
    for i in range(3):  # throttles in a row: the floor must not lift the rate over the named limit
        core.enqueue(f"t{i}", Priority.NEWS, now)
        while not (admitted := core.admit_due(now)):
            now = core.next_event(now) or now
        core.observe(admitted[0][1], now, 429, "APIG.0308", "over ratelimit,limit:2,time:1 minute")
    assert core.control.rate <= 0.98 * 2 / 60


# --- priorities and the bound -------------------------------------------------------------------


@dataclass
class Admission:
    key: str
    priority: Priority
    enqueued_at: float
    admitted_at: float


def run_arrivals(
    core: BudgetCore,
    arrivals: list[tuple[float, Priority, float]],
    answer: Callable[[Permit], tuple[int, str, str]] | None = None,
) -> tuple[list[Admission], int]:
    """Feed waiters at their arrival times; return admissions in order and the longest queue."""
    pending = sorted((t, i, p, idle) for i, (t, p, idle) in enumerate(arrivals))
    admissions: list[Admission] = []
    longest = 0
    now = 0.0
    while pending or len(core.queue):
        while pending and pending[0][0] <= now:
            t, i, priority, idle = pending.pop(0)
            core.enqueue(f"t{i}", priority, t, since_last_poll=idle)
        longest = max(longest, len(core.queue))
        for waiter, permit in core.admit_due(now):
            admissions.append(Admission(waiter.key, waiter.priority, waiter.enqueued_at, now))
            core.observe(permit, now, *(answer(permit) if answer else (200, "", "")))
        due = core.next_event(now)
        candidates = [x for x in (due, pending[0][0] if pending else None) if x is not None]
        if not candidates:
            break
        now = max(now, min(candidates))
    return admissions, longest


arrival_lists = st.lists(
    st.tuples(
        st.floats(0, 30, allow_nan=False),
        st.sampled_from(list(Priority)),
        st.floats(0, 120, allow_nan=False),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    arrivals=arrival_lists,
    rate=st.floats(0.2, 20),
    burst=st.integers(1, 10),
    aging=st.floats(0.5, 10),
    idle_span=st.floats(1, 600),
)
def test_every_waiter_is_admitted_within_the_bound_and_the_rate(
    arrivals: list[tuple[float, Priority, float]], rate: float, burst: int, aging: float, idle_span: float
) -> None:
    core = BudgetCore(rate, burst, 0.0, Tuning(aging=aging, idle_span=idle_span))
    admissions, longest = run_arrivals(core, arrivals)
    assert len(admissions) == len(arrivals)
    bound = core.queue.bound
    assert bound == pytest.approx(3 * aging)
    for a in admissions:
        assert a.admitted_at - a.enqueued_at <= bound + longest / rate + 1e-6
    for i, earlier in enumerate(admissions):  # nobody enqueued more than `bound` later overtakes
        for later in admissions[i + 1 :]:
            assert earlier.enqueued_at <= later.enqueued_at + bound + 1e-9
    assert_within_rate([a.admitted_at for a in admissions], rate, min(burst, max(1, int(rate))))


def assert_within_rate(times: list[float], rate: float, burst: int) -> None:
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - times[i]) + 1e-6 * (j - i + 1)


answers = st.lists(
    st.one_of(
        st.just((200, "", "")),
        st.just((429, "APIG.0308", "The request is over ratelimit,limit:4,time:1 second")),
        st.just((429, "APIG.0308", "The request is over ratelimit,limit:90,time:1 minute")),
        st.just((429, "ModelArts.6101", "")),
        st.just((500, "ModelArts.0001", "")),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(arrivals=arrival_lists, replies=answers, ceiling=st.floats(0.5, 20), burst=st.integers(1, 10))
def test_the_ceiling_holds_whatever_the_gateway_answers(
    arrivals: list[tuple[float, Priority, float]],
    replies: list[tuple[int, str, str]],
    ceiling: float,
    burst: int,
) -> None:
    core = BudgetCore(ceiling, burst, 0.0)
    seen: list[float] = []

    def answer(permit: Permit) -> tuple[int, str, str]:
        seen.append(core.control.rate)
        return replies[permit.seq % len(replies)]

    admissions, _ = run_arrivals(core, arrivals, answer)
    assert len(admissions) == len(arrivals)
    assert all(core.control.min_rate <= r <= ceiling for r in [*seen, core.control.rate])
    assert_within_rate([a.admitted_at for a in admissions], ceiling, burst)


@given(st.lists(st.tuples(st.sampled_from(list(Priority)), st.integers(0, 1000)), min_size=1, max_size=30))
def test_waiters_queued_together_go_by_class_then_longest_idle(waiters: list[tuple[Priority, int]]) -> None:
    core = BudgetCore(1, 1, 0.0)
    admit_one(core, 0.0, key="warm")  # the token is gone: everyone below queues
    for i, (priority, idle) in enumerate(waiters):
        core.enqueue(str(i), priority, 0.0, since_last_poll=idle)
    admitted, _ = run_arrivals(core, [])
    span = Tuning().idle_span

    def expected_place(i: int) -> tuple[int, float, int]:
        priority, idle = waiters[i]
        return priority, -min(idle, span) if priority is Priority.IDLE else 0.0, i

    assert [int(a.key) for a in admitted] == sorted(range(len(waiters)), key=expected_place)


def test_classes_first_then_aging_lets_old_waiters_through() -> None:
    core = BudgetCore(1, 1, 0.0, Tuning(aging=5.0))
    core.enqueue("busy", Priority.NEWS, 0.0)
    core.admit_due(0.0)  # the token is gone: the rest queue up
    core.enqueue("idle-short", Priority.IDLE, 0.0, since_last_poll=1)
    core.enqueue("idle-long", Priority.IDLE, 0.0, since_last_poll=60)
    core.enqueue("news", Priority.NEWS, 0.0)
    core.enqueue("new", Priority.NEW, 0.0)
    order = []
    now = 0.0
    while len(core.queue):
        due = core.next_event(now)
        assert due is not None
        now = due
        order += [w.key for w, _ in core.admit_due(now)]
        if "fresh-new" not in order and len(order) == 2:
            core.enqueue("fresh-new", Priority.NEW, now)  # NEW 2 s later still beats IDLE from 0 s
    assert order == ["new", "news", "fresh-new", "idle-long", "idle-short"]
    core.enqueue("late-new", Priority.NEW, 100.0)
    core.enqueue("old-idle", Priority.IDLE, 100.0 - 16, since_last_poll=0)  # waited past 3*aging
    [(first, _)] = core.admit_due(100.0)
    assert first.key == "old-idle"


# --- the asyncio face -----------------------------------------------------------------------------


class FakeTime:
    """A monotonic clock that moves only when the budget sleeps."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)
        self.now += seconds


async def test_retry_after_pauses_every_waiter() -> None:
    clock = FakeTime()
    metrics = Metrics()
    budget = Budget(10, 5, clock=clock, sleep=clock.sleep, metrics=metrics)
    permit = await budget.acquire(Priority.NEWS, "job-a")
    assert permit.waited == 0
    start = clock.now
    assert budget.observe(permit, 429, "APIG.0308", "over ratelimit", retry_after=7.5)
    assert budget.snapshot().paused_for == pytest.approx(7.5)
    permits = await asyncio.gather(*(budget.acquire(p, f"job-{p.name}") for p in Priority))
    assert all(p.admitted_at >= start + 7.5 for p in permits)
    assert [p.waited for p in permits] == sorted(p.waited for p in permits)
    assert (
        metrics.registry.get_sample_value(
            "modelarts_receiver_budget_throttled_total", {"budget": "default", "error_code": "APIG.0308"}
        )
        == 1
    )
    assert (
        metrics.registry.get_sample_value(
            "modelarts_receiver_budget_wait_seconds_count", {"budget": "default", "priority": "IDLE"}
        )
        == 1
    )
    assert metrics.registry.get_sample_value("modelarts_receiver_budget_rate_per_second", {"budget": "default"}) == 7
    await budget.aclose()


async def test_waiters_are_admitted_by_priority() -> None:
    clock = FakeTime()
    metrics = Metrics()
    budget = Budget(2, 1, clock=clock, sleep=clock.sleep, metrics=metrics)
    await budget.acquire(Priority.NEWS, "warm")  # the bucket is empty now
    order: list[str] = []

    async def poll(priority: Priority, key: str, idle: float | None = None) -> None:
        await budget.acquire(priority, key, since_last_poll=idle)
        order.append(key)

    tasks = [
        asyncio.create_task(poll(Priority.IDLE, "idle-1s", 1)),
        asyncio.create_task(poll(Priority.IDLE, "idle-1h", 3600)),
        asyncio.create_task(poll(Priority.NEWS, "growing-log")),
        asyncio.create_task(poll(Priority.NEW, "discovered")),
    ]
    while sum(budget.snapshot().queued.values()) < 4:
        await asyncio.sleep(0)
    assert budget.snapshot().queued == {"NEW": 1, "NEWS": 1, "IDLE": 2}
    assert (
        metrics.registry.get_sample_value("modelarts_receiver_budget_queued", {"budget": "default", "priority": "IDLE"})
        == 2
    )
    await asyncio.gather(*tasks)
    assert order == ["discovered", "growing-log", "idle-1h", "idle-1s"]
    assert budget.snapshot().queued == {"NEW": 0, "NEWS": 0, "IDLE": 0}


async def test_a_cancelled_waiter_leaves_the_queue_and_takes_no_token() -> None:
    clock = FakeTime()
    budget = Budget(1, 1, clock=clock, sleep=clock.sleep)
    await budget.acquire(Priority.NEWS, "warm")
    waiting = asyncio.create_task(budget.acquire(Priority.IDLE, "gone"))
    while budget.snapshot().queued["IDLE"] == 0:
        await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert budget.snapshot().queued["IDLE"] == 0
    before = clock.now
    permit = await budget.acquire(Priority.IDLE, "next")
    assert permit.key == "next" and permit.admitted_at - before <= 1.0 + 1e-6
    await budget.aclose()


async def test_budget_learns_against_a_gateway_with_concurrent_targets() -> None:
    clock = FakeTime()
    budget = Budget(20, 40, clock=clock, sleep=clock.sleep)
    gateway = Gateway(per_second=8)
    start = clock.now
    calls: list[tuple[float, bool]] = []

    async def target(key: str) -> None:
        while clock.now < start + 120:
            permit = await budget.acquire(Priority.NEWS, key)
            status, code, msg = gateway.call(clock.now - start)
            budget.observe(permit, status, code, msg)
            calls.append((clock.now - start, status == 200))

    await asyncio.gather(*(target(f"job-{i}") for i in range(12)))
    accepted, refused = Run(calls).window(10, 120)
    assert refused / (accepted + refused) <= 0.05
    assert accepted >= 0.8 * 8 * 110
    snap = budget.snapshot()
    assert snap.known_limits == (Limit(8, 1.0),) and snap.rate < 8 and snap.ceiling == 20
    await budget.aclose()


@settings(max_examples=30, deadline=None)
@given(
    replies=answers,
    ceiling=st.floats(0.5, 20),
    burst=st.integers(1, 10),
    priorities=st.lists(st.sampled_from(list(Priority)), min_size=1, max_size=12),
)
def test_concurrent_targets_through_the_asyncio_budget_stay_within_the_ceiling(
    replies: list[tuple[int, str, str]], ceiling: float, burst: int, priorities: list[Priority]
) -> None:
    clock = FakeTime()
    admitted: list[float] = []

    async def main() -> Budget:
        budget = Budget(ceiling, burst, clock=clock, sleep=clock.sleep)

        async def target(key: str, priority: Priority) -> None:
            for _ in range(4):
                permit = await budget.acquire(priority, key, since_last_poll=10)
                admitted.append(permit.admitted_at)
                budget.observe(permit, *replies[permit.seq % len(replies)])

        await asyncio.wait_for(asyncio.gather(*(target(f"t{i}", p) for i, p in enumerate(priorities))), 60)
        await budget.aclose()
        return budget

    budget = asyncio.run(main())
    assert len(admitted) == 4 * len(priorities)
    assert admitted == sorted(admitted)
    assert_within_rate(admitted, ceiling, burst)
    snap = budget.snapshot()
    assert sum(snap.queued.values()) == 0 and snap.rate <= ceiling
