"""Checkpoint stores behind one interface: SQLite (one replica, the default) and PostgreSQL (several).

base.py      the protocols: CursorStore (pipeline), LeaseStore (fenced leases, membership), Store
sqlite.py    CheckpointStore: a SQLite WAL file; its leases are trivially always the caller's
postgres.py  PostgresStore: cursors, leases and members shared through PostgreSQL
leases.py    balance(): the pure plan of which member should hold which lease
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collector_plugin.store.base import CursorStore, Lease, LeaseStore, Store
from collector_plugin.store.sqlite import CheckpointStore

if TYPE_CHECKING:
    from collector_plugin.config import CheckpointConfig

__all__ = ["CheckpointStore", "CursorStore", "Lease", "LeaseStore", "Store", "open_store"]


def open_store(config: CheckpointConfig) -> Store:
    """The store ``config`` asks for: PostgreSQL when ``checkpoint.url`` is set, else SQLite at ``path``."""
    if config.url:
        from collector_plugin.store.postgres import PostgresStore

        return PostgresStore.open(config.url)
    return CheckpointStore.open(config.path)
