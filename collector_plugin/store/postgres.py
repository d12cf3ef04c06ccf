"""The PostgreSQL checkpoint store: cursors, fenced leases and membership shared by several replicas.

Every expiry is judged by the database clock (``now()``), never a replica's, so replicas with
skewed clocks agree on who holds what. Each operation is one statement (bulk over keys, with
``unnest`` arrays), so a renewal round costs one round trip however many leases a replica holds.

The driver (psycopg 3) is imported only when a ``checkpoint.url`` is used: the SQLite default needs
nothing. The password (from the URL or ``PGPASSWORD``) never appears in a message or repr; a lost
connection is a :class:`~collector_plugin.errors.StoreUnavailable` and the next call reconnects.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from collector_plugin.errors import CheckpointError, StoreUnavailable
from collector_plugin.store.base import Lease

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

_SCHEMA_LOCK = 0x4D414F54  # advisory lock: two replicas starting at once create the schema in turn
_DEFAULT_CONNECT_TIMEOUT = "5"
_DISPLAYED = ("host", "hostaddr", "port", "dbname", "user")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cursors ("
    " key text PRIMARY KEY, cursor text NOT NULL, token bigint NOT NULL DEFAULT 0,"
    " updated_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS leases ("
    " key text PRIMARY KEY, owner text, token bigint NOT NULL,"
    " expires_at timestamptz NOT NULL, acquired_at timestamptz NOT NULL)",
    "CREATE INDEX IF NOT EXISTS leases_owner ON leases (owner)",
    "CREATE TABLE IF NOT EXISTS members (id text PRIMARY KEY, heartbeat_at timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS read_times ("
    " key text NOT NULL, start bigint NOT NULL, end_ bigint NOT NULL, time_ns bigint NOT NULL,"
    " PRIMARY KEY (key, start))",
    "CREATE TABLE IF NOT EXISTS listings (source text PRIMARY KEY, targets text NOT NULL, listed_at timestamptz NOT NULL)",
)

_COMMIT_UNFENCED = """INSERT INTO cursors AS c (key, cursor) SELECT * FROM unnest(%(keys)s::text[], %(cursors)s::text[])
ON CONFLICT (key) DO UPDATE SET cursor = excluded.cursor, updated_at = now()
"""

# FOR SHARE waits for a concurrent take of the same lease and re-checks owner and token on the row it
# committed: a commit never lands after the lease changed hands. ``c.token <= excluded.token`` keeps
# a cursor an owner with a newer token wrote.
_COMMIT_FENCED = """WITH fenced AS (
    SELECT i.key, i.cursor, i.token
    FROM unnest(%(keys)s::text[], %(cursors)s::text[], %(tokens)s::bigint[]) AS i(key, cursor, token)
    JOIN leases l ON l.key = i.key AND l.owner = %(owner)s AND l.token = i.token
    FOR SHARE OF l
)
INSERT INTO cursors AS c (key, cursor, token) SELECT key, cursor, token FROM fenced
ON CONFLICT (key) DO UPDATE SET cursor = excluded.cursor, token = excluded.token, updated_at = now()
WHERE c.token <= excluded.token
RETURNING c.key
"""

# ON CONFLICT locks the existing row and evaluates WHERE on its newest version: of two concurrent
# takers, the second sees the first one's unexpired lease and gains nothing.
_TAKE = """INSERT INTO leases AS l (key, owner, token, expires_at, acquired_at)
SELECT k, %(owner)s, 1, now() + make_interval(secs => %(ttl)s), now() FROM unnest(%(keys)s::text[]) AS k
ON CONFLICT (key) DO UPDATE
SET owner = excluded.owner, token = l.token + 1, expires_at = excluded.expires_at, acquired_at = excluded.acquired_at
WHERE l.owner IS NULL OR l.expires_at <= now()
RETURNING l.key, l.token
"""

# An expired lease nobody took yet is still safely ours (its token did not move), so it renews too.
_RENEW = """UPDATE leases SET expires_at = now() + make_interval(secs => %(ttl)s) WHERE owner = %(owner)s
RETURNING key, token
"""

_RELEASE = "UPDATE leases SET owner = NULL, expires_at = now() WHERE owner = %(owner)s AND key = ANY(%(keys)s::text[])"

_SNAPSHOT = (
    "SELECT key, owner, token, expires_at <= now(), extract(epoch FROM acquired_at)::float8 FROM leases ORDER BY key"
)

_HEARTBEAT = (
    "INSERT INTO members (id, heartbeat_at) VALUES (%(member)s, now()) "
    "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
)

_MEMBERS = "SELECT id FROM members WHERE heartbeat_at >= now() - make_interval(secs => %(within)s) ORDER BY id"


class PostgresStore:
    """Cursors in PostgreSQL at ``url``; open it with :meth:`open`. Thread-safe (one connection, locked)."""

    def __init__(self, connection: _Connection) -> None:
        self._db = connection
        self.leases = PostgresLeases(connection)

    @classmethod
    def open(cls, url: str) -> PostgresStore:
        """Connect and create the schema if missing; raise :class:`StoreUnavailable` if unreachable."""
        connection = _Connection(url)
        connection.run(_create_schema)
        return cls(connection)

    @property
    def name(self) -> str:
        """The store's address without credentials, for messages."""
        return self._db.name

    def get(self, key: str) -> str | None:
        row = self._db.run(lambda c: c.execute("SELECT cursor FROM cursors WHERE key = %s", (key,)).fetchone())
        return None if row is None else str(row[0])

    def all(self) -> dict[str, str]:
        rows = self._db.run(lambda c: c.execute("SELECT key, cursor FROM cursors ORDER BY key").fetchall())
        return {str(k): str(v) for k, v in rows}

    def commit(self, cursors: Mapping[str, str]) -> None:
        """Store all ``cursors`` at once, unfenced: for a single replica (several use ``leases.commit``)."""
        if not cursors:
            return
        params = {"keys": list(cursors), "cursors": list(cursors.values())}
        self._db.run(lambda c: c.execute(_COMMIT_UNFENCED, params))

    # -- the read-time journal (collector_plugin.journal), shared by replicas like the cursors

    def read_times(self, key: str) -> list[tuple[int, int, int]]:
        query = "SELECT start, end_, time_ns FROM read_times WHERE key = %s ORDER BY start"
        rows = self._db.run(lambda c: c.execute(query, (key,)).fetchall())
        return [(int(a), int(b), int(t)) for a, b, t in rows]

    def add_read_time(self, key: str, start: int, end: int, time_ns: int) -> None:
        statement = (
            "INSERT INTO read_times (key, start, end_, time_ns) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (key, start) DO UPDATE SET end_ = excluded.end_, time_ns = excluded.time_ns"
        )
        self._db.run(lambda c: c.execute(statement, (key, start, end, time_ns)))

    def prune_read_times(self, key: str, below: int) -> None:
        self._db.run(lambda c: c.execute("DELETE FROM read_times WHERE key = %s AND end_ <= %s", (key, below)))

    def publish_listing(self, source: str, targets: str) -> None:
        """Store what ``source`` lists now (its discovery ran once, for the whole group)."""
        self._db.run(
            lambda c: c.execute(
                "INSERT INTO listings (source, targets, listed_at) VALUES (%s, %s, now()) "
                "ON CONFLICT (source) DO UPDATE SET targets = excluded.targets, listed_at = excluded.listed_at",
                (source, targets),
            )
        )

    def listing(self, source: str) -> tuple[str, float] | None:
        """The last listing of ``source`` and its age in seconds (database clock); None if none yet."""
        row = self._db.run(
            lambda c: c.execute(
                "SELECT targets, extract(epoch FROM now() - listed_at)::float8 FROM listings WHERE source = %s",
                (source,),
            ).fetchone()
        )
        return None if row is None else (str(row[0]), float(row[1]))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.name})"


class PostgresLeases:
    """The lease table and membership (see :class:`~collector_plugin.store.base.LeaseStore`)."""

    def __init__(self, connection: _Connection) -> None:
        self._db = connection

    def take(self, owner: str, keys: Iterable[str], ttl: float) -> dict[str, int]:
        wanted = sorted(set(keys))  # one lock order for every taker: no deadlock between them
        if not wanted:
            return {}
        params = {"owner": owner, "keys": wanted, "ttl": _seconds(ttl, "ttl")}
        rows = self._db.run(lambda c: c.execute(_TAKE, params).fetchall())
        return {str(k): int(t) for k, t in rows}

    def renew(self, owner: str, ttl: float) -> dict[str, int]:
        params = {"owner": owner, "ttl": _seconds(ttl, "ttl")}
        rows = self._db.run(lambda c: c.execute(_RENEW, params).fetchall())
        return {str(k): int(t) for k, t in rows}

    def release(self, owner: str, keys: Iterable[str]) -> None:
        params = {"owner": owner, "keys": sorted(set(keys))}
        if params["keys"]:
            self._db.run(lambda c: c.execute(_RELEASE, params))

    def commit(self, owner: str, cursors: Mapping[str, tuple[str, int]]) -> set[str]:
        if not cursors:
            return set()
        keys = sorted(cursors)
        params = {
            "owner": owner,
            "keys": keys,
            "cursors": [cursors[k][0] for k in keys],
            "tokens": [cursors[k][1] for k in keys],
        }
        rows = self._db.run(lambda c: c.execute(_COMMIT_FENCED, params).fetchall())
        return set(keys) - {str(row[0]) for row in rows}

    def snapshot(self) -> dict[str, Lease]:
        rows = self._db.run(lambda c: c.execute(_SNAPSHOT).fetchall())
        return {
            str(key): Lease(str(key), None if owner is None else str(owner), int(token), bool(expired), float(at))
            for key, owner, token, expired, at in rows
        }

    def heartbeat(self, member: str) -> None:
        self._db.run(lambda c: c.execute(_HEARTBEAT, {"member": member}))

    def members(self, alive_within: float) -> list[str]:
        params = {"within": _seconds(alive_within, "alive_within")}
        return [str(row[0]) for row in self._db.run(lambda c: c.execute(_MEMBERS, params).fetchall())]


class _Connection:
    """One psycopg connection, made on first use and again after it was lost; errors are redacted."""

    def __init__(self, url: str) -> None:
        driver = _driver()
        self._url = url
        self._secrets = _secrets(url)
        try:
            params = driver.conninfo.conninfo_to_dict(url)
        except driver.Error as exc:
            raise CheckpointError(f"checkpoint.url is not a valid PostgreSQL URI: {self._redact(exc)}") from None
        where = " ".join(f"{k}={params[k]}" for k in _DISPLAYED if params.get(k))
        self.name = f"PostgreSQL ({where})" if where else "PostgreSQL (libpq defaults)"
        self._options: dict[str, Any] = {}
        if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
            self._options["connect_timeout"] = _DEFAULT_CONNECT_TIMEOUT
        if "application_name" not in params and "PGAPPNAME" not in os.environ:
            self._options["application_name"] = "modelarts-receiver"
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def run(self, operation: Callable[[psycopg.Connection[Any]], T]) -> T:
        driver = _driver()
        with self._lock:
            try:
                return operation(self._connected())
            except (driver.OperationalError, driver.InterfaceError) as exc:
                self._drop()
                raise StoreUnavailable(f"checkpoint store {self.name} is unavailable: {self._redact(exc)}") from None
            except driver.Error as exc:
                raise CheckpointError(f"checkpoint store {self.name}: {self._redact(exc)}") from None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _connected(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._drop()
            conn: psycopg.Connection[Any] = _driver().connect(self._url, autocommit=True, **self._options)
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _redact(self, exc: BaseException) -> str:
        text = str(exc).strip() or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _create_schema(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for statement in _SCHEMA:
            conn.execute(statement)


def _driver() -> Any:
    """psycopg, imported on first use so the SQLite path needs no driver."""
    try:
        import psycopg
    except ImportError:
        raise CheckpointError(
            "checkpoint.url needs the PostgreSQL driver: pip install 'modelarts-otel-receiver[postgres]'"
        ) from None
    return psycopg


def _secrets(url: str) -> list[str]:
    """Every form of the password that a driver message could echo (raw, decoded, from PGPASSWORD)."""
    found: set[str] = set()
    try:
        raw = urlsplit(url).password
    except ValueError:
        raw = None
    if raw:
        found.update({raw, unquote(raw)})
    for part in url.replace("&", " ").replace("?", " ").split():
        if part.startswith("password="):
            value = part.removeprefix("password=").strip("'")
            found.update({value, unquote(value)})
    if os.environ.get("PGPASSWORD"):
        found.add(os.environ["PGPASSWORD"])
    return sorted((s for s in found if s), key=len, reverse=True)


def _seconds(value: float, what: str) -> float:
    if not value >= 0:
        raise ValueError(f"{what} must be >= 0 seconds, got {value!r}")
    return float(value)
