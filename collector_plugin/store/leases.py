"""Balancing leases over live members: a pure plan, the same for every replica that computes it.

Like the KCL's lease taker, every member gets a fair share (within one of ``keys / members``),
takes free or expired leases first and steals only what others hold over their share. Unlike a
taker that steals one lease per round, the plan is computed whole, and it is sticky: the members
that already hold more get the rounded-up shares, and a member gives up only its surplus, so the
fewest leases change hands. Of its leases, a member gives up those it has held longest (it has
had its turn; its oldest acquisitions are also the least likely to be mid-catch-up after a move).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from collector_plugin.store.base import Lease


@dataclass(frozen=True)
class Holding:
    """Who holds a live lease, and since when (database clock, Unix seconds)."""

    owner: str
    acquired_at: float


@dataclass(frozen=True)
class Assignment:
    """One member's part of the plan: its fair share, what to take, what to release."""

    share: int
    take: tuple[str, ...]
    give_up: tuple[str, ...]


def holdings(snapshot: Mapping[str, Lease]) -> dict[str, Holding]:
    """The live leases of a lease-table snapshot (expired or released ones are free)."""
    return {
        key: Holding(lease.owner, lease.acquired_at)
        for key, lease in snapshot.items()
        if lease.owner is not None and not lease.expired
    }


def balance(members: Iterable[str], keys: Iterable[str], held: Mapping[str, Holding]) -> dict[str, Assignment]:
    """Plan each live member's share of ``keys`` from the current live ``held`` leases.

    A lease held by someone not among ``members`` counts as free; leases on keys outside ``keys``
    are left alone. The result depends only on the inputs' contents, not their order.
    """
    alive = sorted(set(members))
    targets = sorted(set(keys))
    if not alive:
        return {}
    mine = _held_by(alive, targets, held)
    shares = _shares(alive, len(targets), mine)
    give_up = {m: _surplus(mine[m], shares[m], held) for m in alive}
    owned = {key for keys_of in mine.values() for key in keys_of}
    pool = [key for key in targets if key not in owned] + [key for m in alive for key in give_up[m]]
    plan: dict[str, Assignment] = {}
    for member in alive:
        need = max(0, shares[member] - len(mine[member]))
        take, pool = pool[:need], pool[need:]
        plan[member] = Assignment(shares[member], tuple(take), give_up[member])
    return plan


def _held_by(alive: list[str], targets: list[str], held: Mapping[str, Holding]) -> dict[str, list[str]]:
    members = set(alive)
    mine: dict[str, list[str]] = {m: [] for m in alive}
    for key in targets:
        holding = held.get(key)
        if holding is not None and holding.owner in members:
            mine[holding.owner].append(key)
    return mine


def _shares(alive: list[str], total: int, mine: Mapping[str, list[str]]) -> dict[str, int]:
    """Floor shares, and the remainder's +1 to those holding most: that keeps the most leases in place."""
    base, extra = divmod(total, len(alive))
    by_holding = sorted(alive, key=lambda m: (-len(mine[m]), m))
    return {m: base + (1 if rank < extra else 0) for rank, m in enumerate(by_holding)}


def _surplus(keys: list[str], share: int, held: Mapping[str, Holding]) -> tuple[str, ...]:
    oldest_first = sorted(keys, key=lambda k: (held[k].acquired_at, k))
    return tuple(oldest_first[: max(0, len(keys) - share)])
