"""Poll slots: a bound on polls reading at once, handed out most urgent first, never leaked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_plugin.budget import CallTag, Priority
from collector_plugin.records import Record, Span
from collector_plugin.scheduler import Scheduler, SourceRuntime
from collector_plugin.slots import PollSlots
from collector_plugin.source import ReaderStatus, SourceConfig
from collector_plugin.telemetry import Metrics


async def test_waiters_are_served_new_then_news_then_idle_longest_waiting_first() -> None:
    slots = PollSlots(1)
    served: list[str] = []
    tags = {
        "idle-5s": CallTag(Priority.IDLE, "a", since_last_poll=5),
        "news": CallTag(Priority.NEWS, "b"),
        "idle-50s": CallTag(Priority.IDLE, "c", since_last_poll=50),
        "new": CallTag(Priority.NEW, "d"),
    }

    async def poll(name: str) -> None:
        async with slots.slot(tags[name]):
            served.append(name)
            await asyncio.sleep(0)

    async with slots.slot(CallTag(Priority.NEW, "holder")):
        tasks = [asyncio.create_task(poll(name)) for name in tags]
        await asyncio.sleep(0.01)  # all four wait behind the holder
        assert served == []
    await asyncio.gather(*tasks)
    assert served == ["new", "news", "idle-50s", "idle-5s"]


@settings(max_examples=50, deadline=None)
@given(
    slots=st.integers(1, 4),
    plan=st.lists(st.tuples(st.sampled_from(list(Priority)), st.booleans()), min_size=1, max_size=12),
)
def test_cancelled_waiters_never_leak_or_exceed_a_slot(slots: int, plan: list[tuple[Priority, bool]]) -> None:
    async def scenario() -> None:
        pool = PollSlots(slots)
        inside = peak = 0

        async def poll(priority: Priority) -> None:
            nonlocal inside, peak
            async with pool.slot(CallTag(priority, "k")):
                inside += 1
                peak = max(peak, inside)
                try:
                    await asyncio.sleep(0.001)  # cancelled here, or while waiting for the slot
                finally:
                    inside -= 1

        tasks = [asyncio.create_task(poll(priority)) for priority, _ in plan]
        await asyncio.sleep(0)
        for task, (_, cancel) in zip(tasks, plan, strict=True):
            if cancel:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert peak <= slots
        # every slot came back: as many polls as there are slots get in at once again
        held = [pool.slot(CallTag(Priority.IDLE, "k")) for _ in range(slots)]
        for cm in held:
            await asyncio.wait_for(cm.__aenter__(), 1)
        for cm in held:
            await cm.__aexit__(None, None, None)

    asyncio.run(scenario())


def test_no_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PollSlots(0)


@dataclass
class Target:
    key: str
    active: bool = True


@dataclass
class BusyReader:
    key: str
    status: ReaderStatus = field(default_factory=ReaderStatus)

    async def poll(self, *, draining: bool = False) -> AsyncIterator[Span]:
        yield Span(self.key, [Record(body="x" * 1000, uid=self.key, observed_ns=1)], cursor="1")


@dataclass
class ManySource:
    name: ClassVar[str] = "many"
    description: ClassVar[str] = "many"
    config_model: ClassVar[type[SourceConfig]] = SourceConfig
    count: int = 300

    async def targets(self) -> Sequence[Target]:
        return [Target(f"many/{i}") for i in range(self.count)]

    def open(self, target: Any, cursor: str | None) -> BusyReader:
        return BusyReader(target.key)


class StuckSink:
    """A pipeline that is full: every put waits until the test lets go."""

    def __init__(self) -> None:
        self.waiting = 0
        self.released = asyncio.Event()

    async def put(self, span: Span) -> None:
        self.waiting += 1
        await self.released.wait()


async def test_polls_waiting_on_a_full_pipeline_are_bounded_by_the_slots() -> None:
    sink = StuckSink()
    runtime = SourceRuntime("many", ManySource(), SourceConfig(poll_interval=60))  # type: ignore[arg-type]
    scheduler = Scheduler([runtime], sink, {}, Metrics(), jitter=False, max_polls=8)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    async with asyncio.timeout(20):
        while sink.waiting < 8:
            await asyncio.sleep(0.005)
        for _ in range(50):  # the other 292 targets get no slot while the pipeline is full
            await asyncio.sleep(0.002)
        assert sink.waiting == 8
        sink.released.set()
        while scheduler.polls_completed < 300:  # and each gets its turn once there is room
            await asyncio.sleep(0.005)
    stop.set()
    await task
