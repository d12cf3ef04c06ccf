"""Where the checkpoint stores used to live: kept so ``from collector_plugin.checkpoint import ...`` works.

The stores are in :mod:`collector_plugin.store` (SQLite, PostgreSQL, leases).
"""

from __future__ import annotations

from collector_plugin.store.base import CursorStore
from collector_plugin.store.sqlite import SCHEMA_VERSION, CheckpointStore

__all__ = ["SCHEMA_VERSION", "CheckpointStore", "CursorStore"]
