"""The ack ledger against a plain oracle, over any interleaving of opens, acks, splits, rejections.

A scenario is a queue of spans (key, cursor or none, record count), cut into batches across span
borders as the batcher does; some batches are split in halves (as a refused batch is), and each
leaf is acknowledged or rejected. The leaves are settled in a random order, with spans opened
lazily in queue order in between. The oracle knows which records are settled at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector_plugin.export.ledger import AckLedger, Part, split_parts


@dataclass(frozen=True)
class SpanSpec:
    key: str
    cursor: str | None
    nrecords: int


Leaf = tuple[list[tuple[int, int, int]], bool]  # parts by span index, rejected?


@dataclass(frozen=True)
class Scenario:
    spans: list[SpanSpec]
    leaves: list[Leaf]  # in the order they are settled
    early_opens: list[int]  # spans opened ahead of need before each leaf


@dataclass
class Offer:
    span: int  # index of the span whose cursor was offered
    key: str
    settled_before: bool  # was every record of spans 0..span settled at that moment?


def _batches(spans: list[SpanSpec], cuts: set[int]) -> list[list[tuple[int, int, int]]]:
    """Cut the queue's records (flattened in order) at ``cuts`` into batches of span ranges."""
    batches: list[list[tuple[int, int, int]]] = [[]]
    flat = 0
    for index, span in enumerate(spans):
        start = 0
        for i in range(span.nrecords):
            if flat in cuts and (i > start or batches[-1]):
                if i > start:
                    batches[-1].append((index, start, i))
                batches.append([])
                start = i
            flat += 1
        if span.nrecords > start:
            batches[-1].append((index, start, span.nrecords))
    return [b for b in batches if b]


@st.composite
def _leaves(draw: st.DrawFn, batch: list[tuple[int, int, int]]) -> list[Leaf]:
    """Settle ``batch`` whole, or split it in halves (recursively) as a refused batch is."""
    size = sum(stop - start for _, start, stop in batch)
    if size > 1 and draw(st.booleans()):
        first, second = split_parts(batch)
        return draw(_leaves(first)) + draw(_leaves(second))
    return [(batch, draw(st.booleans()))]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    raw = draw(st.lists(st.tuples(st.sampled_from("abc"), st.booleans(), st.integers(0, 5)), min_size=1, max_size=12))
    spans = [SpanSpec(key, f"{key}-{i}" if has else None, n) for i, (key, has, n) in enumerate(raw)]
    total = sum(s.nrecords for s in spans)
    cuts = draw(st.sets(st.integers(1, max(1, total - 1)))) if total > 1 else set()
    leaves: list[Leaf] = []
    for batch in _batches(spans, cuts):
        leaves.extend(draw(_leaves(batch)))
    order = draw(st.permutations(leaves))
    early = draw(st.lists(st.integers(0, 2), min_size=len(order), max_size=len(order)))
    return Scenario(spans, list(order), early)


class Replay:
    """Drive a real ledger through a scenario, checking each offer against the oracle."""

    def __init__(self, scenario: Scenario) -> None:
        self.spans = scenario.spans
        self.ledger = AckLedger()
        self.ids: list[int] = []
        self.settled = [0] * len(self.spans)
        self.prefix = 0  # spans before this index are fully settled and opened
        self.offers: list[Offer] = []
        self.steps: list[tuple[dict[str, str], dict[str, str]]] = []  # (offered, the oracle's offer)
        self.holding: list[tuple[set[str], set[str]]] = []  # (keys the ledger holds, the oracle's)
        for leaf, early in zip(scenario.leaves, scenario.early_opens, strict=True):
            parts, rejected = leaf
            self.open_until(max(i for i, _, _ in parts) + 1 + early)
            ledger_parts: list[Part] = [(self.ids[i], a, b) for i, a, b in parts]
            for i, a, b in parts:
                self.settled[i] += b - a
            self.record(self.ledger.reject(ledger_parts) if rejected else self.ledger.ack(ledger_parts))
        self.open_until(len(self.spans))

    def open_until(self, count: int) -> None:
        while len(self.ids) < min(count, len(self.spans)):
            spec = self.spans[len(self.ids)]
            self.ids.append(self.ledger.open(spec.key, spec.cursor, spec.nrecords))
            self.record(self.ledger.ready())  # as the pipeline does: an empty span may close now

    def record(self, offered: dict[str, str]) -> None:
        old = self.prefix
        while self.prefix < len(self.ids) and self.settled[self.prefix] == self.spans[self.prefix].nrecords:
            self.prefix += 1
        expected = {s.key: s.cursor for s in self.spans[old : self.prefix] if s.cursor is not None}
        self.steps.append((offered, expected))
        unoffered = {s.key for s in self.spans[self.prefix : len(self.ids)]}
        self.holding.append(({key for key in "abc" if self.ledger.holds(key)}, unoffered))
        by_cursor = {s.cursor: i for i, s in enumerate(self.spans) if s.cursor is not None}
        for key, cursor in offered.items():
            index = by_cursor[cursor]
            assert self.spans[index].key == key
            done = index < len(self.ids) and all(self.settled[j] == self.spans[j].nrecords for j in range(index + 1))
            self.offers.append(Offer(index, key, done))


@given(scenarios())
def test_a_cursor_is_offered_only_once_its_span_and_all_before_it_are_settled(scenario: Scenario) -> None:
    replay = Replay(scenario)
    assert all(offer.settled_before for offer in replay.offers)


@given(scenarios())
def test_every_cursor_is_offered_once_everything_is_settled(scenario: Scenario) -> None:
    replay = Replay(scenario)
    last_offered: dict[str, int] = {}
    for offer in replay.offers:
        last_offered[offer.key] = offer.span
    last_cursor = {s.key: i for i, s in enumerate(scenario.spans) if s.cursor is not None}
    assert last_offered == last_cursor
    assert len(replay.ledger) == 0


@given(scenarios())
def test_the_offered_cursor_per_key_never_moves_backwards_or_repeats(scenario: Scenario) -> None:
    replay = Replay(scenario)
    seen: dict[str, int] = {}
    for offer in replay.offers:
        assert offer.span > seen.get(offer.key, -1), f"{offer.key}: offered span {offer.span} after {seen[offer.key]}"
        seen[offer.key] = offer.span


@given(scenarios())
def test_nothing_is_offered_needlessly(scenario: Scenario) -> None:
    """Each step offers exactly the latest cursor per key of the spans it closed, nothing else."""
    replay = Replay(scenario)
    for offered, expected in replay.steps:
        assert offered == expected


@given(scenarios())
def test_a_key_is_held_exactly_while_a_span_of_it_is_not_offered(scenario: Scenario) -> None:
    """What a lease handoff waits on: ``holds(key)`` until the key's last opened span is offered."""
    replay = Replay(scenario)
    for held, oracle in replay.holding:
        assert held == oracle
    assert not any(replay.ledger.holds(key) for key in "abc")


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 6)), min_size=1, max_size=8))
def test_split_parts_halves_a_batch_in_order(ranges: list[tuple[int, int]]) -> None:
    parts = [(span, start, start + length + 1) for span, (start, length) in enumerate(ranges)]
    total = sum(stop - start for _, start, stop in parts)
    first, second = split_parts(parts)

    def records(ps: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
        return [(span, i) for span, start, stop in ps for i in range(start, stop)]

    assert records(first) + records(second) == records(parts)
    assert len(records(first)) == total // 2
    assert all(start < stop for _, start, stop in first + second)


def test_settling_a_record_twice_is_refused_not_counted() -> None:
    ledger = AckLedger()
    span = ledger.open("a", "c1", 2)
    assert ledger.ack([(span, 0, 1)]) == {}
    with pytest.raises(ValueError, match="settled twice"):
        ledger.ack([(span, 0, 2)])
    assert ledger.ack([(span, 1, 2)]) == {"a": "c1"}
    with pytest.raises(ValueError, match="not open"):
        ledger.reject([(span, 0, 1)])


def test_a_range_outside_the_span_names_the_span_and_range() -> None:
    ledger = AckLedger()
    span = ledger.open("job-7", "c", 3)
    with pytest.raises(ValueError, match=r"'job-7': bad record range 2\.\.4 of 3"):
        ledger.ack([(span, 2, 4)])
    with pytest.raises(ValueError, match="negative"):
        ledger.open("job-7", "c", -1)
