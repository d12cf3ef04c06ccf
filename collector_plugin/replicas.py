"""Several replicas sharing the targets through the checkpoint store's fenced leases.

A replica reads a target only while it holds the target's lease, and commits its cursor with the
lease's fencing token (KCL's lease counter): the database refuses the commit once the lease moved
on, so a paused or partitioned replica never moves a cursor back or over another owner's.

Each round (a third of ``lease_ttl``) the :class:`Coordinator` heartbeats, renews every lease it
holds in one statement, plans the group's balance (:func:`~collector_plugin.store.leases.balance`,
the same plan on every replica), takes its share of free or expired leases and hands off its
surplus: it stops polling the target, waits until the pipeline has delivered and committed all of
it, then releases the lease, so a target changes hands at a committed cursor. A replica that could
not renew for most of a TTL stops reading at once (its leases may be someone else's by now), keeps
what its pipeline holds, and takes its share again when the store answers. The API budget is split
evenly over the live replicas: the gateway limits the credential, not the pod.

The scheduler asks :meth:`Coordinator.owns` before every poll and every span it hands on; the
answer runs out with the lease, by this replica's monotonic clock, well before the database lets
another replica take it (``SAFETY``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import math
import os
import secrets
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, runtime_checkable

from collector_plugin.errors import CheckpointError
from collector_plugin.scheduler import sleep_or_stop
from collector_plugin.store.base import CursorStore, LeaseStore
from collector_plugin.store.leases import balance, holdings
from collector_plugin.telemetry import Metrics

log = logging.getLogger("collector_plugin.replicas")

T = TypeVar("T")

SAFETY = 0.75
"""Share of the TTL, counted from the start of the last successful renewal, for which a replica
trusts its leases: the database's own clock ends them at 1.0, after the renewal statement ran."""

HANDOFF_CHECK = 0.05


class Scheduling(Protocol):
    """What the coordinator drives in the scheduler (:class:`~collector_plugin.scheduler.Scheduler`)."""

    def running(self) -> set[str]: ...

    def listed_keys(self) -> set[str]: ...

    def adopt(self, cursors: Mapping[str, str | None]) -> list[str]: ...

    async def relinquish(self, keys: Collection[str]) -> None: ...


class Holding(Protocol):
    """What the coordinator asks the pipeline: does it still hold records or a cursor of ``key``?"""

    def holds(self, key: str) -> bool: ...


class BudgetShare(Protocol):
    def share(self, replicas: int) -> None: ...


@runtime_checkable
class Listings(Protocol):
    """Where the group's discovery results live (the PostgreSQL store's ``listings`` table)."""

    def publish_listing(self, source: str, targets: str) -> None: ...

    def listing(self, source: str) -> tuple[str, float] | None: ...


class Listable(Protocol):
    async def targets(self) -> Sequence[Any]: ...


STALE_LISTING = 3.0
"""Refresh intervals (plus a TTL) after which a follower stops waiting for the leader's listing
and lists by itself: a paused leader must not leave the group blind to new jobs."""


def encode_targets(targets: Sequence[Any]) -> str | None:
    """Targets as JSON (class and fields), or None when one is not a plain dataclass."""
    out = []
    for target in targets:
        if not dataclasses.is_dataclass(target) or isinstance(target, type):
            return None
        cls = type(target)
        out.append({"type": f"{cls.__module__}:{cls.__qualname__}", "fields": dataclasses.asdict(target)})
    try:
        return json.dumps(out)
    except (TypeError, ValueError):
        return None


def decode_targets(text: str, source: object) -> list[Any] | None:
    """The targets :func:`encode_targets` wrote, rebuilt only from classes of ``source``'s own
    package (a row never makes us import anything else); None when anything does not fit."""
    package = type(source).__module__.rsplit(".", 1)[0]
    try:
        out = []
        for item in json.loads(text):
            module, _, name = str(item["type"]).partition(":")
            if not (module == package or module.startswith(package + ".")) or "." in name:
                return None
            cls = getattr(importlib.import_module(module), name)
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                return None
            factory: Callable[..., Any] = cls
            out.append(factory(**item["fields"]))
        return out
    except (ValueError, TypeError, KeyError, AttributeError, ImportError):
        return None


def default_member_id() -> str:
    """Host (the pod name in Kubernetes), process id and a random suffix: unique per process."""
    host = os.environ.get("HOSTNAME") or socket.gethostname() or "replica"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Coordinator:
    """This replica's leases: membership, renewal, balance, handoff; :meth:`owns` for the scheduler."""

    def __init__(
        self,
        leases: LeaseStore,
        cursors: CursorStore,
        member: str,
        ttl: float,
        metrics: Metrics,
        *,
        budget: BudgetShare | None = None,
        listings: Listings | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._listings = listings
        self.leases = leases
        self.member = member
        self.ttl = float(ttl)
        self._cursors = cursors
        self._metrics = metrics
        self._budget = budget
        self._clock = clock
        self._scheduler: Scheduling | None = None
        self._pipeline: Holding | None = None
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leases")
        # Replaced whole, never mutated: the pipeline's commit thread reads it without a lock.
        self.tokens: dict[str, int] = {}
        self._valid_until = -math.inf
        self._handing_off: dict[str, asyncio.Task[None]] = {}
        self._listed: dict[str, frozenset[str]] = {}
        self._kick = asyncio.Event()
        self.available = False  # the last round reached the store (and the leases are fresh)
        self.last_error = ""
        self.members: list[str] = []
        self.rounds = 0
        self.winding_down = False  # set at shutdown: renew only, until release_all()

    def attach(self, scheduler: Scheduling, pipeline: Holding) -> None:
        self._scheduler, self._pipeline = scheduler, pipeline

    # -- what the scheduler asks

    def listed(self, source: str, keys: Collection[str]) -> None:
        """A source listed its targets: a round soon takes this replica's share of new ones."""
        new = frozenset(keys)
        if self._listed.get(source) != new:
            self._listed[source] = new
            self._kick.set()

    @property
    def leader(self) -> bool:
        """The first live member (by name) runs discovery for the group; before the first round, everyone."""
        return not self.members or self.members[0] == self.member

    async def list_targets(self, name: str, source: Listable, refresh: float) -> list[Any]:
        """Discovery once for the group: the leader lists and publishes, the others read its
        listing (no API calls); a follower lists by itself when the listing is missing or stale."""
        if self._listings is None or self.leader or not self.available:
            targets = list(await source.targets())
            encoded = encode_targets(targets) if self._listings is not None and self.leader else None
            if encoded is not None and self._listings is not None:
                with contextlib.suppress(CheckpointError):  # followers list by themselves meanwhile
                    await self._call(self._listings.publish_listing, name, encoded)
            return targets
        try:
            found = await self._call(self._listings.listing, name)
        except CheckpointError:
            found = None
        if found is not None and found[1] <= STALE_LISTING * refresh + self.ttl:
            decoded = decode_targets(found[0], source)
            if decoded is not None:
                return decoded
        return list(await source.targets())

    def owns(self, key: str) -> bool:
        return key in self.tokens and key not in self._handing_off and self._now() < self._valid_until

    def ready(self) -> tuple[bool, str]:
        if self.available:
            return True, "ready"
        if not self.rounds:
            return False, "joining the replicas"
        return False, f"checkpoint store unavailable, reading paused: {self.last_error}"

    # -- fenced commits (called from the pipeline's commit thread)

    def fence(self, cursors: Mapping[str, str]) -> tuple[dict[str, tuple[str, int]], set[str]]:
        """``cursors`` with the tokens of the leases held, and the keys held no more."""
        tokens = self.tokens
        fenced = {key: (cursor, tokens[key]) for key, cursor in cursors.items() if key in tokens}
        return fenced, set(cursors) - set(fenced)

    # -- the rounds

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds every third of the TTL (sooner when targets change) until ``stop``; then
        release every lease whose target's cursor is committed, so others take them at once."""
        try:
            while not stop.is_set():
                self._kick.clear()
                await self.round()
                pause = self.ttl / 3 if self.available else min(1.0, self.ttl / 3)
                await sleep_or_stop(stop, pause, self._kick)
        finally:
            for task in self._handing_off.values():
                task.cancel()
            await asyncio.gather(*self._handing_off.values(), return_exceptions=True)

    async def round(self) -> None:
        """One round: heartbeat, renew, balance, take, hand off, start what is ours."""
        started = self._now()
        try:
            await self._call(self.leases.heartbeat, self.member)
            renewed = await self._call(self.leases.renew, self.member, self.ttl)
        except CheckpointError as exc:
            await self._unreachable(exc)
            return
        finally:
            self.rounds += 1
        self._valid_until = started + self.ttl * SAFETY
        lost = set(self.tokens) - set(renewed)
        self.tokens = renewed
        await self._forget(lost - set(self._handing_off))
        if not self.available:
            if self.last_error:
                log.warning("checkpoint store reachable again; reading resumes", extra={"member": self.member})
            self.available, self.last_error = True, ""
        if self.winding_down:
            return  # shutting down: keep the leases while the pipeline flushes, take nothing new
        try:
            await self._balance()
        except CheckpointError as exc:
            await self._unreachable(exc)
            return
        self._metrics.leases_held.set(len(self.tokens))

    async def _balance(self) -> None:
        assert self._scheduler is not None and self._pipeline is not None, "attach() first"
        members = await self._call(self.leases.members, self.ttl)
        if self.member not in members:
            members = sorted({*members, self.member})
        if members != self.members:
            log.info("replicas: %d alive", len(members), extra={"member": self.member, "members": members})
        self.members = members
        self._metrics.replicas_alive.set(len(members))
        if self._budget is not None:
            self._budget.share(len(members))
        wanted = self._scheduler.listed_keys()
        snapshot = await self._call(self.leases.snapshot)
        plan = balance(members, wanted, holdings(snapshot)).get(self.member)
        if plan is not None and plan.take:
            gained = await self._call(self.leases.take, self.member, plan.take, self.ttl)
            if gained:
                self.tokens = {**self.tokens, **gained}
                self._metrics.lease_changes.labels("taken").inc(len(gained))
                log.info(
                    "took %d target leases (share %d of %d)",
                    len(gained),
                    plan.share,
                    len(wanted),
                    extra={"member": self.member, "taken": len(gained)},
                )
        surplus = set(plan.give_up) if plan is not None else set()
        unlisted = {key for key in self.tokens if key not in wanted}
        for key in (surplus | unlisted) - self._handing_off.keys():
            self._handing_off[key] = asyncio.create_task(self._hand_off(key), name=f"handoff:{key}")
        await self._start_owned()

    async def _start_owned(self) -> None:
        """Start the targets this replica holds and does not poll yet, at their committed cursors.

        A key the pipeline still holds something of (from before its lease was lost) waits: its
        old cursors must be settled first, or they could land after the new reader's."""
        assert self._scheduler is not None and self._pipeline is not None
        running = self._scheduler.running()
        listed = self._scheduler.listed_keys()
        start = [
            key
            for key in self.tokens
            if key in listed and key not in running and key not in self._handing_off and not self._pipeline.holds(key)
        ]
        if not start or not self._now() < self._valid_until:
            return
        cursors = await self._call(lambda: {key: self._cursors.get(key) for key in start})
        if self._now() < self._valid_until:
            self._scheduler.adopt({key: cursors[key] for key in start if key in self.tokens})

    async def _hand_off(self, key: str) -> None:
        """Stop polling ``key``, wait until all of it is delivered and committed, release its lease."""
        assert self._scheduler is not None and self._pipeline is not None
        try:
            await self._scheduler.relinquish([key])
            while self._pipeline.holds(key):
                await asyncio.sleep(HANDOFF_CHECK)
            await self._call(self.leases.release, self.member, [key])
            self.tokens = {k: t for k, t in self.tokens.items() if k != key}
            self._metrics.lease_changes.labels("handed_off").inc()
            log.debug("lease handed off at its committed cursor", extra={"member": self.member, "target": key})
        except CheckpointError as exc:  # kept: it is renewed, or expires, and the next round tries again
            log.warning("releasing a lease failed: %s", exc, extra={"member": self.member, "target": key})
        finally:
            self._handing_off.pop(key, None)
            self._metrics.leases_held.set(len(self.tokens))

    async def _unreachable(self, exc: CheckpointError) -> None:
        """The store did not answer: trust the leases until ``SAFETY`` of their TTL, then stop reading."""
        self.last_error = str(exc)
        if self.available:
            log.error(
                "checkpoint store unavailable; reading stops in %.0fs unless it answers (what is held is kept): %s",
                max(0.0, self._valid_until - self._now()),
                exc,
                extra={"member": self.member},
            )
        if self._now() >= self._valid_until:
            if self.available or self._scheduler_running():
                log.error(
                    "checkpoint store unavailable for the leases' lifetime: reading paused until it answers",
                    extra={"member": self.member},
                )
            self.available = False
            assert self._scheduler is not None
            await self._scheduler.relinquish(self._scheduler.running())

    def _scheduler_running(self) -> bool:
        return self._scheduler is not None and bool(self._scheduler.running())

    async def _forget(self, keys: set[str]) -> None:
        """Leases that moved on (expired and taken): stop reading those targets."""
        if not keys or self._scheduler is None:
            return
        self._metrics.lease_changes.labels("lost").inc(len(keys))
        log.warning(
            "%d target leases were lost (expired or taken over); stopped reading them",
            len(keys),
            extra={"member": self.member, "lost": len(keys)},
        )
        await self._scheduler.relinquish(keys)

    async def release_all(self) -> None:
        """At shutdown: release the leases whose targets have nothing left uncommitted here."""
        if not self.tokens or self._pipeline is None:
            return
        done = [key for key in self.tokens if not self._pipeline.holds(key)]
        with contextlib.suppress(CheckpointError):
            await self._call(self.leases.release, self.member, done)
            self.tokens = {k: t for k, t in self.tokens.items() if k not in done}

    def close(self) -> None:
        self._db.shutdown(wait=False, cancel_futures=True)

    # -- plumbing

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """Run a store call in the lease thread: the event loop keeps serving while the database answers."""
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)


class FencedCursors:
    """The pipeline's cursor store with several replicas: each commit carries its lease's token.

    A cursor of a target whose lease this replica no longer holds, or whose commit the database
    refuses (the lease moved on), is dropped and counted: the target's new owner reads on from the
    last cursor that did land, so nothing is lost, and what it sends again is byte-identical.
    """

    def __init__(self, store: CursorStore, coordinator: Coordinator, metrics: Metrics) -> None:
        self._store = store
        self._coordinator = coordinator
        self._metrics = metrics

    def get(self, key: str) -> str | None:
        return self._store.get(key)

    def all(self) -> dict[str, str]:
        return self._store.all()

    def commit(self, cursors: Mapping[str, str]) -> None:
        fenced, stale = self._coordinator.fence(cursors)
        refused = self._coordinator.leases.commit(self._coordinator.member, fenced) if fenced else set()
        dropped = stale | refused
        if dropped:
            self._metrics.commits_fenced.inc(len(dropped))
            log.info(
                "%d cursors not committed: their leases are held by another replica now",
                len(dropped),
                extra={"member": self._coordinator.member, "targets": sorted(dropped)[:10]},
            )

    def close(self) -> None:
        self._store.close()
