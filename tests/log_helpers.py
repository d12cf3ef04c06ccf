"""Helpers shared by the log-source tests: a hand-moved clock and the expected line split."""

from __future__ import annotations

import random
from collections.abc import Sequence

from collector_plugin.records import Record

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
