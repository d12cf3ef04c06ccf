"""The read-time journal: when each part of a log was first read, so a replay stamps it the same.

A log line carries no time of its own, so its record's observed time is when the receiver read
it; read again after a crash, it would get a new one, and Loki would keep both copies (an entry
is deduplicated only when byte-identical). So the first time a range of positions (bytes of a
log, or event times) is read, ``[start, end) → time`` is written to the store *before* the
records go out; a replay finds the range and uses its time. Times never decrease along a log.
Ranges below a committed cursor are pruned when a reader opens there, and at most
:data:`MAX_RANGES` are kept per log (older ones only matter to a replay of data that old). When
the store cannot be written (a full disk), records still go out with the time kept in memory:
delivery first, a warning that a replay may not match. A store that cannot be *reached* (the
replicas' database down) is different: it will answer again, and meanwhile another replica may
take the log over and read it again, so the read fails and is retried; nothing goes out unjournaled.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from collector_plugin.errors import ReceiverError, StoreUnavailable

log = logging.getLogger("collector_plugin.journal")

MAX_RANGES = 4096

Range = tuple[int, int, int]  # start, end, time (ns)


class JournalBackend(Protocol):
    """Where the journal lives: the checkpoint store (SQLite or PostgreSQL), or memory."""

    def read_times(self, key: str) -> list[Range]: ...

    def add_read_time(self, key: str, start: int, end: int, time_ns: int) -> None: ...

    def prune_read_times(self, key: str, below: int) -> None: ...


class MemoryJournal:
    """A journal backend in memory (tests, commands that never resume)."""

    def __init__(self) -> None:
        self.ranges: dict[str, list[Range]] = {}

    def read_times(self, key: str) -> list[Range]:
        return list(self.ranges.get(key, []))

    def add_read_time(self, key: str, start: int, end: int, time_ns: int) -> None:
        self.ranges.setdefault(key, []).append((start, end, time_ns))

    def prune_read_times(self, key: str, below: int) -> None:
        self.ranges[key] = [r for r in self.ranges.get(key, []) if r[1] > below]


class ReadJournal:
    """Hands out the :class:`LogTimes` of each log over one backend."""

    def __init__(self, backend: JournalBackend | None = None) -> None:
        self.backend: JournalBackend = backend if backend is not None else MemoryJournal()

    def open(self, key: str, resume: int = 0) -> LogTimes:
        """The times of log ``key``; ranges wholly below ``resume`` (committed) are dropped."""
        if resume > 0:
            self.backend.prune_read_times(key, resume)
        return LogTimes(self.backend, key, sorted(self.backend.read_times(key)))


class LogTimes:
    """The read times of one log, by position."""

    def __init__(self, backend: JournalBackend, key: str, ranges: Sequence[Range]) -> None:
        self._backend = backend
        self.key = key
        self._starts = [r[0] for r in ranges]  # beside the ranges: bisect on the hot path without a key call
        self._ranges = list(ranges)
        self._warned = False

    @property
    def end(self) -> int:
        """The end of the positions stamped so far (0 before the first)."""
        return self._ranges[-1][1] if self._ranges else 0

    def stamp(self, start: int, end: int, now_ns: int) -> None:
        """Make sure ``[start, end)`` has a time: positions past what is known get ``now_ns``.

        Written through to the backend before returning, so the records built from these
        positions may be exported.
        """
        first = max(start, self.end)
        if end <= first:
            return
        time_ns = max(now_ns, self._ranges[-1][2] if self._ranges else 0)
        try:
            self._backend.add_read_time(self.key, first, end, time_ns)
        except StoreUnavailable:
            raise  # the poll fails and is retried once the database answers: see the module docstring
        except ReceiverError as exc:  # e.g. a full disk: the records still go out, a replay may differ
            if not self._warned:
                log.warning("read times not journaled; a replay of these records may differ", extra={"error": str(exc)})
            self._warned = True
        else:
            self._warned = False
        self._ranges.append((first, end, time_ns))
        self._starts.append(first)
        if len(self._ranges) > MAX_RANGES:
            below = self._ranges[-MAX_RANGES][0]
            del self._ranges[:-MAX_RANGES], self._starts[:-MAX_RANGES]
            with contextlib.suppress(ReceiverError):  # else pruned next time: rows left only cost space
                self._backend.prune_read_times(self.key, below + 1)

    def at(self, position: int, default: int) -> int:
        """The time position ``position`` was first read (``default`` when it never was)."""
        i = bisect.bisect_right(self._starts, position) - 1
        if i < 0:
            return self._ranges[0][2] if self._ranges else default
        return self._ranges[i][2]

    def steps(self, lo: int, hi: int, default: int) -> list[tuple[int, int]]:
        """:meth:`at` over positions ``lo..hi`` as change points: ``[(lo, at(lo)), (start, time) ...]``.

        A span's lines take their times from this snapshot in one walk instead of a search per
        line; later stamps never change the time of a position already stamped.
        """
        out = [(lo, self.at(lo, default))]
        i = bisect.bisect_right(self._starts, lo)
        starts, ranges = self._starts, self._ranges
        while i < len(starts) and starts[i] <= hi:
            out.append((starts[i], ranges[i][2]))
            i += 1
        return out


__all__ = ["MAX_RANGES", "JournalBackend", "LogTimes", "MemoryJournal", "ReadJournal"]
