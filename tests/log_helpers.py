"""Helpers shared by the log-source tests: a hand-moved clock, the expected line split, a reader harness."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

from collector_plugin.records import Record, Span
from collector_plugin.source import Reader

MIXED = ("a", "b", " ", "中", "文", "😀", "é", "\n", "\r\n", "[INFO] ", "[WARN] ", "ERROR ", "x" * 30)


class FakeClock:
    """A clock tests move by hand (nanoseconds)."""

    def __init__(self, start: int = 1_700_000_000_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


def expected_lines(data: bytes) -> list[str]:
    """The log split into lines as the issue defines them (LF; a CRLF's CR dropped)."""
    parts = data.split(b"\n")
    last = parts.pop()
    out = [(p[:-1] if p.endswith(b"\r") else p).decode("utf-8", "replace") for p in parts]
    last = last[:-1] if last.endswith(b"\r") else last  # a CR that ends the log ends its line
    if last:
        out.append(last.decode("utf-8", "replace"))
    return out


def joined(records: list[Record]) -> list[str]:
    """Line records with continued pieces joined to the record before them."""
    out: list[str] = []
    for rec in records:
        if rec.event_name:
            continue
        if rec.attributes.get("modelarts.log.continued") and out:
            out[-1] += str(rec.body)
        else:
            out.append(str(rec.body))
    return out


def mixed_text(seed: int, n: int, alphabet: Sequence[str] = MIXED) -> bytes:
    """``n`` random pieces of multibyte text, CRLF and level tokens."""
    rnd = random.Random(seed)
    return "".join(rnd.choice(alphabet) for _ in range(n)).encode()


class Harness:
    """Drives one reader like the scheduler does, optionally reopening it at the last cursor."""

    def __init__(self, source: Any, target: Any) -> None:
        self.source = source
        self.target = target
        self.cursor: str | None = None
        self.records: list[Record] = []
        self.spans: list[Span] = []
        self.reader: Reader = source.open(target, None)

    async def poll(self, *, draining: bool = False, crash_after: int | None = None) -> None:
        """Poll once; with ``crash_after``, stop after that many spans and reopen at the cursor."""
        count = 0
        gen: AsyncIterator[Span] = self.reader.poll(draining=draining)
        async for span in gen:
            self.spans.append(span)
            self.records += span.records
            if span.cursor is not None:
                self.cursor = span.cursor
            count += 1
            if crash_after is not None and count >= crash_after:
                break
        await gen.aclose()  # type: ignore[attr-defined]
        if crash_after is not None:
            self.reader = self.source.open(self.target, self.cursor)
