"""The store interfaces: cursors for the pipeline, fenced leases for replicas sharing targets.

A lease gives one owner the right to read and commit one target (key). Its ``token`` (the fencing
token, KCL's lease counter) grows by one every time the lease changes hands; a commit carries the
token its owner got and is refused once the lease moved on, so a paused or partitioned replica
can never move a cursor back or over another owner's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Lease:
    """One row of the lease table, as the database saw it (its clock decides ``expired``)."""

    key: str
    owner: str | None
    token: int
    expired: bool
    acquired_at: float  # Unix time (database clock) of the last change of hands


class CursorStore(Protocol):
    """What the pipeline and the sources need from a checkpoint store."""

    def get(self, key: str) -> str | None: ...

    def all(self) -> dict[str, str]: ...

    def commit(self, cursors: Mapping[str, str]) -> None: ...

    def close(self) -> None: ...


class LeaseStore(Protocol):
    """Leases with fencing tokens and replica membership; ``ttl`` and ``alive_within`` in seconds."""

    def take(self, owner: str, keys: Iterable[str], ttl: float) -> dict[str, int]:
        """Take those of ``keys`` that are free or expired; returns the gained keys and their tokens."""
        ...

    def renew(self, owner: str, ttl: float) -> dict[str, int]:
        """Extend every lease ``owner`` still holds; returns them (key → token)."""
        ...

    def release(self, owner: str, keys: Iterable[str]) -> None:
        """Give up ``keys`` (those ``owner`` holds) so another member can take them at once."""
        ...

    def commit(self, owner: str, cursors: Mapping[str, tuple[str, int]]) -> set[str]:
        """Store ``{key: (cursor, token)}`` where the token still matches; returns the refused keys."""
        ...

    def snapshot(self) -> dict[str, Lease]:
        """Every lease, by key."""
        ...

    def heartbeat(self, member: str) -> None:
        """Say ``member`` is alive now."""
        ...

    def members(self, alive_within: float) -> list[str]:
        """Members whose last heartbeat is at most ``alive_within`` seconds old, sorted."""
        ...


class Store(CursorStore, Protocol):
    """A checkpoint store with its lease table and the read-time journal (``collector_plugin.journal``)."""

    def read_times(self, key: str) -> list[tuple[int, int, int]]: ...

    def add_read_time(self, key: str, start: int, end: int, time_ns: int) -> None: ...

    def prune_read_times(self, key: str, below: int) -> None: ...

    @property
    def leases(self) -> LeaseStore: ...
