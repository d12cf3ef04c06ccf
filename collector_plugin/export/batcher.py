"""Cutting the queue of encoded spans into export requests: by count, by bytes, by delay.

Synchronous and clock-free (``now`` is passed in): the coordinator decides when to ask.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from collector_plugin.config import BatchConfig
from collector_plugin.records import EMPTY_ATTRIBUTES, Attributes, RecordRun, Span

# Framing bytes per request beyond the records themselves (resource/scope headers are added apart).
REQUEST_OVERHEAD = 64


class QueuedSpan:
    """A span as delivery keeps it: its records encoded once, and how many were batched.

    The records themselves are not kept, nor their uids (a refused record's is read back from its
    bytes): the encoded bytes are all delivery needs, and fewer live objects keep memory (a
    full 16 MiB queue held ~11 MB of uid strings) and GC time down.
    """

    __slots__ = ("framed", "ident", "nbytes", "resource", "resources", "sent", "sent_bytes", "target")

    def __init__(self, span: Span, framed: list[bytes], ident: int) -> None:
        records = span.records
        self.ident = ident  # its id in the ack ledger
        self.target = span.target
        self.framed = framed
        if isinstance(records, RecordRun):
            first, same = records.resource, True
        else:
            first = records[0].resource if records else EMPTY_ATTRIBUTES
            # One resource per span is the rule; a per-record list only for the rare mixed span.
            same = all(r.resource is first or r.resource == first for r in records)
        self.resource: Attributes | None = first if same else None
        self.resources: list[Attributes] = [] if same else [r.resource for r in records]
        self.nbytes = sum(map(len, framed))
        self.sent = 0  # records handed to batches so far
        self.sent_bytes = 0  # and their bytes


Slice = tuple[QueuedSpan, int, int]
"""Records ``start..stop-1`` of one queued span."""


@dataclass(slots=True)
class Batch:
    """Slices of queued spans sent as one request; ``seq`` numbers batches in queue order."""

    slices: list[Slice]
    nrecords: int
    nbytes: int
    seq: int


class Batcher:
    """The spans whose records were not handed to a batch yet, and the rules to cut the next one.

    ``header_size(resource)`` is what a resource's first record adds to a request (its resource
    and scope headers), so a batch never outgrows ``max_bytes`` however many resources it mixes.
    """

    def __init__(self, batch: BatchConfig, header_size: Callable[[Attributes], int]) -> None:
        self._max_records = batch.max_records
        self._max_bytes = batch.max_bytes
        self._max_delay = float(batch.max_delay)
        self._header_size = header_size
        self._pending: deque[QueuedSpan] = deque()
        self._records = 0
        self._bytes = 0
        self._first_at = 0.0
        self._seq = 0

    def __bool__(self) -> bool:
        return bool(self._pending)

    def add(self, span: QueuedSpan, now: float) -> None:
        if not span.framed:
            return
        if not self._pending:
            self._first_at = now
        self._pending.append(span)
        self._records += len(span.framed)
        self._bytes += span.nbytes

    def due(self, now: float, *, force: bool = False) -> bool:
        """A batch should be cut now: it is full by count or bytes, or its oldest record waited
        ``max_delay`` (``force``: a flush or close asked for everything)."""
        return bool(self._pending) and (
            force
            or self._records >= self._max_records
            or self._bytes + REQUEST_OVERHEAD >= self._max_bytes
            or now - self._first_at >= self._max_delay
        )

    def wait_time(self, now: float) -> float:
        """Seconds until the oldest pending record has waited ``max_delay``."""
        return self._first_at + self._max_delay - now

    def take(self, now: float) -> Batch | None:
        """Cut the next batch from the head of the queue, within the count and byte limits.

        A single record larger than ``max_bytes`` still goes, alone: the collector decides.
        """
        slices: list[Slice] = []
        count = nbytes = 0
        budget = self._max_bytes - REQUEST_OVERHEAD
        resources: set[Attributes] = set()
        pending = self._pending
        while pending and count < self._max_records:
            span = pending[0]
            framed = span.framed
            start = stop = span.sent
            limit = min(len(framed), start + self._max_records - count)
            if span.resource is not None:
                budget -= self._new_header(span.resource, resources)
                rest = span.nbytes - span.sent_bytes
                if limit == len(framed) and rest <= budget:
                    stop = limit  # the rest of the span fits: no need to weigh record by record
                    budget -= rest
            while stop < limit:
                size = len(framed[stop])
                if span.resource is None:
                    size += self._new_header(span.resources[stop], resources)
                if size > budget and (count or stop > start):
                    break
                budget -= size
                stop += 1
            if stop > start:
                size = span.nbytes - span.sent_bytes if stop == len(framed) else sum(map(len, framed[start:stop]))
                slices.append((span, start, stop))
                count += stop - start
                nbytes += size
                self._records -= stop - start
                self._bytes -= size
                span.sent = stop
                span.sent_bytes += size
            if stop < len(framed):
                break
            pending.popleft()
            if pending:
                self._first_at = now
        if not slices:
            return None
        self._seq += 1
        return Batch(slices, count, nbytes, self._seq)

    def _new_header(self, resource: Attributes, seen: set[Attributes]) -> int:
        if resource in seen:
            return 0
        seen.add(resource)
        return self._header_size(resource)


def by_resource(slices: Sequence[Slice]) -> dict[Attributes, list[bytes]]:
    """The encoded records of ``slices`` grouped by resource, in order (one ResourceLogs each)."""
    grouped: dict[Attributes, list[bytes]] = {}
    for span, start, stop in slices:
        if span.resource is not None:
            grouped.setdefault(span.resource, []).extend(span.framed[start:stop])
            continue
        for i in range(start, stop):
            grouped.setdefault(span.resources[i], []).append(span.framed[i])
    return grouped


def slice_bytes(slices: Sequence[Slice]) -> int:
    """Encoded bytes of the records in ``slices``."""
    return sum(sum(map(len, span.framed[start:stop])) for span, start, stop in slices)
