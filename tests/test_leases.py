"""balance(): fair shares, sticky minimal moves, free leases first, determinism (property-tested)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st

from collector_plugin.store.base import Lease
from collector_plugin.store.leases import Assignment, Holding, balance, holdings

MEMBER_NAMES = [f"m{i}" for i in range(7)]


@st.composite
def situations(draw: st.DrawFn) -> tuple[list[str], list[str], dict[str, Holding]]:
    """Live members, target keys, and live leases: some free, some held by a dead member ("ghost")."""
    members = draw(st.lists(st.sampled_from(MEMBER_NAMES), min_size=1, max_size=6, unique=True))
    keys = [f"k{i}" for i in range(draw(st.integers(0, 40)))]
    owner = st.one_of(st.none(), st.sampled_from([*members, "ghost"]))
    held: dict[str, Holding] = {}
    for key in keys:
        who = draw(owner)
        if who is not None:
            held[key] = Holding(who, float(draw(st.integers(0, 5))))
    # a live lease on a key that is no longer a target is left alone
    if draw(st.booleans()):
        held["retired"] = Holding(members[0], 0.0)
    return members, keys, held


def current(members: list[str], keys: list[str], held: Mapping[str, Holding]) -> dict[str, set[str]]:
    return {m: {k for k in keys if k in held and held[k].owner == m} for m in members}


def after(plan: Mapping[str, Assignment], mine: Mapping[str, set[str]]) -> dict[str, set[str]]:
    return {m: (mine[m] - set(a.give_up)) | set(a.take) for m, a in plan.items()}


def best_kept(mine: Mapping[str, set[str]], total: int) -> int:
    """Oracle: the most leases any fair split can leave in place (every choice of who rounds up)."""
    names = sorted(mine)
    base, extra = divmod(total, len(names))
    return max(
        sum(min(len(mine[m]), base + (m in up)) for m in names) for up in map(set, itertools.combinations(names, extra))
    )


@given(situations())
def test_every_target_ends_with_exactly_one_member_and_shares_are_fair(
    situation: tuple[list[str], list[str], dict[str, Holding]],
) -> None:
    members, keys, held = situation
    plan = balance(members, keys, held)
    assert set(plan) == set(members)
    ideal = len(keys) / len(members)
    assert all(abs(a.share - ideal) < 1 for a in plan.values())
    assert sum(a.share for a in plan.values()) == len(keys)
    final = after(plan, current(members, keys, held))
    assert {m: len(final[m]) for m in members} == {m: a.share for m, a in plan.items()}
    assert sorted(k for owned in final.values() for k in owned) == sorted(keys)


@given(situations())
def test_moves_are_minimal_and_only_surplus_is_given_up(
    situation: tuple[list[str], list[str], dict[str, Holding]],
) -> None:
    members, keys, held = situation
    plan = balance(members, keys, held)
    mine = current(members, keys, held)
    moved = sum(len(a.take) for a in plan.values())
    assert moved == len(keys) - best_kept(mine, len(keys))
    for member, assignment in plan.items():
        assert set(assignment.give_up) <= mine[member]
        assert len(assignment.give_up) == max(0, len(mine[member]) - assignment.share)
        assert not set(assignment.take) & mine[member]
        assert not (assignment.take and assignment.give_up)


@given(situations())
def test_free_leases_are_taken_before_stolen_ones_and_the_oldest_are_given_up(
    situation: tuple[list[str], list[str], dict[str, Holding]],
) -> None:
    members, keys, held = situation
    plan = balance(members, keys, held)
    mine = current(members, keys, held)
    surrendered = {k for a in plan.values() for k in a.give_up}
    owned = set().union(*mine.values())
    free = [k for k in keys if k not in owned]
    taken = [k for a in plan.values() for k in a.take]
    assert set(taken) == set(free) | surrendered  # nothing else changes hands
    for assignment in plan.values():
        kinds = [k in surrendered for k in assignment.take]
        assert kinds == sorted(kinds)  # free ones first
    for member, assignment in plan.items():
        kept = mine[member] - set(assignment.give_up)
        for gone in assignment.give_up:
            assert all((held[gone].acquired_at, gone) < (held[k].acquired_at, k) for k in kept)


@given(situations(), st.randoms(use_true_random=False))
def test_the_plan_depends_on_contents_not_order_and_is_stable(
    situation: tuple[list[str], list[str], dict[str, Holding]], rng: random.Random
) -> None:
    members, keys, held = situation
    plan = balance(members, keys, held)
    shuffled_members, shuffled_keys, items = list(members), list(keys), list(held.items())
    for sequence in (shuffled_members, shuffled_keys, items):
        rng.shuffle(sequence)
    assert balance(shuffled_members, shuffled_keys, dict(items)) == plan
    # once applied, the plan asks for nothing more
    final = after(plan, current(members, keys, held))
    settled = {k: Holding(m, 9.0) for m, owned in final.items() for k in owned}
    assert all(not a.take and not a.give_up for a in balance(members, keys, settled).values())


def test_a_joining_member_takes_only_the_surplus_of_the_busiest() -> None:
    held = {f"k{i}": Holding("a" if i < 5 else "b", float(i)) for i in range(9)}
    plan = balance(["a", "b", "c"], list(held), held)
    assert plan["c"] == Assignment(3, ("k0", "k1", "k5"), ())
    assert plan["a"] == Assignment(3, (), ("k0", "k1"))  # a's two oldest
    assert plan["b"] == Assignment(3, (), ("k5",))


def test_leases_of_a_dead_member_and_expired_ones_are_free() -> None:
    snapshot = {
        "x": Lease("x", "dead", 4, False, 1.0),
        "y": Lease("y", "a", 2, True, 1.0),
        "z": Lease("z", None, 7, True, 1.0),
        "w": Lease("w", "a", 1, False, 2.0),
    }
    live = holdings(snapshot)
    assert live == {"x": Holding("dead", 1.0), "w": Holding("a", 2.0)}
    plan = balance(["a", "b"], ["w", "x", "y", "z"], live)
    assert plan["a"].take + plan["b"].take == ("x", "y", "z")
    assert plan["a"].give_up == plan["b"].give_up == ()
    assert balance([], ["w"], live) == {}
