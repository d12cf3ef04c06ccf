"""The checkpoint store: one cursor per target, in SQLite, committed only after acknowledgement.

Why SQLite: atomic multi-key commits (all cursors of an acknowledged batch move together or not at
all) and a journal that survives ``kill -9``. WAL mode with ``synchronous=NORMAL`` makes every
commit durable against a crash of this process (not against power loss of the host, where the
last commits may be replayed: replays carry the same ``log.record.uid``).

A store that cannot be opened, read or written is a :class:`~collector_plugin.errors.CheckpointError`
naming the path; the store is never silently recreated, because a restart from zero would re-read
(or, for ``start_at: end``, skip) everything.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from collector_plugin.errors import CheckpointError
from collector_plugin.store.base import Lease

SCHEMA_VERSION = "1"
_APPLICATION_ID = 0x4D414F54  # "MAOT": marks a file as ours, so a foreign database is refused

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursors (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS read_times (
    key TEXT NOT NULL,
    start INTEGER NOT NULL,
    end_ INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    PRIMARY KEY (key, start)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
"""


class CheckpointStore:
    """Cursors in a SQLite file at ``path``; open it with :meth:`open`."""

    def __init__(self, path: str, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self.leases = SingleOwnerLeases(self)

    @classmethod
    def open(cls, path: str) -> CheckpointStore:
        """Open (or create) the store at ``path``; raise :class:`CheckpointError` if it is unusable."""
        target = Path(path).expanduser()
        if target.is_dir():
            raise CheckpointError(f"checkpoint.path {path!r} is a directory: point it at a file inside it")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot create the directory of checkpoint.path {path!r} ({exc.strerror or exc}): "
                "create it or choose a writable location"
            ) from exc
        existed = target.exists() and target.stat().st_size > 0
        try:
            conn = sqlite3.connect(str(target), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _open_error(path, exc) from exc
        try:
            _prepare(conn, existed, path)
        except CheckpointError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise _open_error(path, exc) from exc
        return cls(str(target), conn)

    def get(self, key: str) -> str | None:
        """The committed cursor of ``key``, or None if it never committed."""
        try:
            row = self._conn.execute("SELECT value FROM cursors WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot read checkpoint store {self.path!r}: {exc}") from exc
        return None if row is None else str(row[0])

    def all(self) -> dict[str, str]:
        """Every committed cursor, by key."""
        try:
            rows = self._conn.execute("SELECT key, value FROM cursors ORDER BY key").fetchall()
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot read checkpoint store {self.path!r}: {exc}") from exc
        return {str(k): str(v) for k, v in rows}

    def commit(self, cursors: Mapping[str, str]) -> None:
        """Store all ``cursors`` in one transaction: all of them, or (on error) none."""
        if not cursors:
            return
        now = time.time()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO cursors (key, value, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    [(key, value, now) for key, value in cursors.items()],
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise CheckpointError(
                f"cannot write checkpoint store {self.path!r}: {exc} "
                "(is the disk full or the file read-only?); the previous cursors are kept"
            ) from exc

    # -- the read-time journal (collector_plugin.journal): written before the records it stamps go out

    def read_times(self, key: str) -> list[tuple[int, int, int]]:
        try:
            rows = self._conn.execute(
                "SELECT start, end_, time_ns FROM read_times WHERE key = ? ORDER BY start", (key,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot read checkpoint store {self.path!r}: {exc}") from exc
        return [(int(a), int(b), int(t)) for a, b, t in rows]

    def add_read_time(self, key: str, start: int, end: int, time_ns: int) -> None:
        self._write(
            "INSERT INTO read_times (key, start, end_, time_ns) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key, start) DO UPDATE SET end_ = excluded.end_, time_ns = excluded.time_ns",
            (key, start, end, time_ns),
        )

    def prune_read_times(self, key: str, below: int) -> None:
        self._write("DELETE FROM read_times WHERE key = ? AND end_ <= ?", (key, below))

    def _write(self, statement: str, params: tuple[object, ...]) -> None:
        try:
            self._conn.execute(statement, params)
        except sqlite3.Error as exc:
            raise CheckpointError(
                f"cannot write checkpoint store {self.path!r}: {exc} (is the disk full or the file read-only?)"
            ) from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SingleOwnerLeases:
    """The lease interface for one replica: whoever asks owns every lease, and no commit is refused.

    SQLite is one replica's store, so there is nobody to fence against; this keeps the code that
    drives leases the same for both backends. Tokens stay 1; held leases live in memory only.
    """

    def __init__(self, store: CheckpointStore) -> None:
        self._store = store
        self._held: dict[str, tuple[str, float]] = {}
        self._members: dict[str, float] = {}

    def take(self, owner: str, keys: Iterable[str], ttl: float) -> dict[str, int]:
        gained = [key for key in keys if key not in self._held]
        now = time.time()
        self._held.update(dict.fromkeys(gained, (owner, now)))
        return dict.fromkeys(gained, 1)

    def renew(self, owner: str, ttl: float) -> dict[str, int]:
        return dict.fromkeys(self._held, 1)

    def release(self, owner: str, keys: Iterable[str]) -> None:
        for key in keys:
            self._held.pop(key, None)

    def commit(self, owner: str, cursors: Mapping[str, tuple[str, int]]) -> set[str]:
        self._store.commit({key: cursor for key, (cursor, _token) in cursors.items()})
        return set()

    def snapshot(self) -> dict[str, Lease]:
        return {key: Lease(key, who, 1, False, at) for key, (who, at) in self._held.items()}

    def heartbeat(self, member: str) -> None:
        self._members[member] = time.monotonic()

    def members(self, alive_within: float) -> list[str]:
        now = time.monotonic()
        return sorted(m for m, at in self._members.items() if now - at <= alive_within)


def _prepare(conn: sqlite3.Connection, existed: bool, path: str) -> None:
    """Check an existing file is a sound store of ours, or initialise a new one; prove it writable."""
    if existed:
        check = conn.execute("PRAGMA quick_check(1)").fetchone()
        if check is None or check[0] != "ok":
            raise CheckpointError(
                f"checkpoint store {path!r} is corrupt (quick_check: {check[0] if check else 'no answer'}): "
                "restore it from a backup, or move it away to start over (sources then start from "
                "their start_at position)"
            )
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id != _APPLICATION_ID:
            raise CheckpointError(
                f"{path!r} is a SQLite database but not a checkpoint store of this receiver: "
                "point checkpoint.path at another file"
            )
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if version is None or version[0] != SCHEMA_VERSION:
            raise CheckpointError(
                f"checkpoint store {path!r} has schema version {version[0] if version else None!r}, "
                f"this receiver reads {SCHEMA_VERSION!r}: use a matching receiver version"
            )
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise CheckpointError(f"checkpoint store {path!r}: cannot enable WAL journaling (got {mode!r})")
    conn.execute("PRAGMA synchronous=NORMAL")
    # One write transaction on open proves the file writable now, not at the first commit.
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (SCHEMA_VERSION,),
        )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('opened_at', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(time.time()),),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _open_error(path: str, exc: sqlite3.Error) -> CheckpointError:
    text = str(exc)
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        hint = "the file is not a readable checkpoint store: restore it from a backup or move it away"
    elif "readonly" in text or "read-only" in text or "unable to open" in text:
        hint = "the file or its directory is not writable by this process: fix the permissions"
    else:
        hint = "check the file and its permissions"
    return CheckpointError(f"cannot open checkpoint store {path!r}: {text}; {hint}")
