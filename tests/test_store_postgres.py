"""The PostgreSQL store against a real server: fenced commits, lease hand-over, bulk renewal,
concurrent takers, Unix sockets, redacted secrets and a database restart."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_harness import PASSWORD, PostgresServer

from collector_plugin.config import CheckpointConfig, parse_config
from collector_plugin.errors import CheckpointError, ConfigError, StoreUnavailable
from collector_plugin.store import CheckpointStore, open_store
from collector_plugin.store.postgres import PostgresStore

T = TypeVar("T")
LONG = 300.0  # a ttl no test outlives


@pytest.fixture
def database(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


@pytest.fixture
def open_pg(postgres_server: PostgresServer, database: str) -> Iterator[Callable[..., PostgresStore]]:
    opened: list[PostgresStore] = []

    def make(**params: str) -> PostgresStore:
        store = PostgresStore.open(postgres_server.url(database, **params))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def eventually(check: Callable[[], T], timeout: float = 60.0) -> T:
    """Poll ``check`` until it returns without raising; the timeout only guards a hung test."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --- config -------------------------------------------------------------------------------------

MODELARTS = {"region": "r", "project_id": "p", "auth": {"ak": "a", "sk": "s"}}


def test_config_accepts_a_postgres_url_and_keeps_the_password_out_of_the_repr() -> None:
    url = f"postgresql://app:{PASSWORD}@db.internal:5432/receiver?sslmode=require"
    config = parse_config({"modelarts": MODELARTS, "checkpoint": {"url": url}}, {}, environ={})
    assert config.checkpoint.url == url
    assert PASSWORD not in repr(config) and PASSWORD not in str(config.checkpoint)


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ({"url": f"mysql://u:{PASSWORD}@h/db"}, "checkpoint.url: must be a postgresql:// URI"),
        ({"url": f"postgresql://u:{PASSWORD}@h/db", "path": "/tmp/x.db"}, "checkpoint.url: set either"),
    ],
)
def test_config_errors_name_checkpoint_url_and_never_echo_the_password(
    checkpoint: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"modelarts": MODELARTS, "checkpoint": checkpoint}, {}, environ={})
    assert any(problem.startswith(message) for problem in caught.value.problems), caught.value.problems
    assert PASSWORD not in str(caught.value)


def test_open_store_picks_the_backend(tmp_path: Path, postgres_server: PostgresServer, database: str) -> None:
    with open_store(CheckpointConfig(path=str(tmp_path / "cp.db"))) as sqlite_store:
        assert isinstance(sqlite_store, CheckpointStore)
    with open_store(CheckpointConfig(url=postgres_server.url(database))) as pg_store:
        assert isinstance(pg_store, PostgresStore)
        pg_store.commit({"a": "1", "b": "2"})
        pg_store.commit({"a": "3"})
        assert pg_store.all() == {"a": "3", "b": "2"}
        assert pg_store.get("a") == "3" and pg_store.get("missing") is None


# --- schema -------------------------------------------------------------------------------------


def test_replicas_starting_at_once_create_the_schema_once(postgres_server: PostgresServer, database: str) -> None:
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []

    def start() -> None:
        barrier.wait()
        try:
            stores.append(PostgresStore.open(postgres_server.url(database)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stores[0].commit({"k": "v"})
    assert [s.get("k") for s in stores] == ["v"] * 6
    for store in stores:
        store.close()


# --- leases -------------------------------------------------------------------------------------


def test_the_token_grows_on_every_change_of_hands(open_pg: Callable[..., PostgresStore]) -> None:
    a, b = open_pg().leases, open_pg().leases
    assert a.take("a", ["k"], LONG) == {"k": 1}
    assert b.take("b", ["k"], LONG) == {}  # held: not taken
    a.release("a", ["k"])
    assert b.take("b", ["k"], 0) == {"k": 2}
    assert a.take("a", ["k"], LONG) == {"k": 3}  # b's lease (ttl 0) expired by the database clock
    lease = a.snapshot()["k"]
    assert (lease.owner, lease.token, lease.expired) == ("a", 3, False)


def test_an_expired_lease_is_taken_by_another_member_and_a_live_one_is_not(
    open_pg: Callable[..., PostgresStore],
) -> None:
    a, b = open_pg().leases, open_pg().leases
    assert a.take("a", ["short", "long"], LONG) == {"short": 1, "long": 1}
    assert a.renew("a", 0) == {"short": 1, "long": 1}  # both now expire at once...
    assert a.take("a", ["other"], LONG) == {"other": 1}
    assert b.take("b", ["short", "long", "other"], LONG) == {"short": 2, "long": 2}  # ...but "other" lives
    assert a.renew("a", LONG) == {"other": 1}  # a learns what it still holds


def test_a_fenced_commit_is_refused_once_the_lease_moved_on(open_pg: Callable[..., PostgresStore]) -> None:
    store_a, store_b = open_pg(), open_pg()
    a, b = store_a.leases, store_b.leases
    token_a = a.take("a", ["k", "j"], 0)["k"]
    assert a.commit("a", {"k": ("10", token_a)}) == set()
    token_b = b.take("b", ["k"], LONG)["k"]
    assert token_b == token_a + 1
    assert b.commit("b", {"k": ("20", token_b)}) == set()
    # a paused replica wakes up with its old token: refused, the cursor does not move back
    assert a.commit("a", {"k": ("15", token_a), "j": ("5", token_a)}) == {"k"}
    assert store_a.all() == {"k": "20", "j": "5"}
    # neither a wrong owner nor a guessed token gets through
    assert a.commit("a", {"k": ("99", token_b)}) == {"k"}
    assert b.commit("b", {"k": ("99", token_b + 1)}) == {"k"}
    assert a.commit("a", {"never-leased": ("1", 1)}) == {"never-leased"}
    assert store_b.get("k") == "20"


def test_bulk_renewal_is_one_statement(postgres_server: PostgresServer, open_pg: Callable[..., PostgresStore]) -> None:
    app = f"renew-{uuid.uuid4().hex[:8]}"
    leases = open_pg(application_name=app).leases
    keys = [f"target-{i}" for i in range(300)]
    assert len(leases.take("me", keys, LONG)) == 300
    before = len(postgres_server.statements(app))
    assert set(leases.renew("me", LONG)) == set(keys)
    sent = postgres_server.statements(app)[before:]
    assert len(sent) == 1 and "UPDATE leases" in sent[0], sent


def test_concurrent_takers_never_both_get_a_lease(postgres_server: PostgresServer, database: str) -> None:
    keys = [f"k{i}" for i in range(200)]
    takers = [PostgresStore.open(postgres_server.url(database)) for _ in range(4)]
    barrier = threading.Barrier(len(takers))
    gained: dict[str, dict[str, int]] = {}

    def take(index: int) -> None:
        barrier.wait()
        # each taker asks in its own order: the store must still neither deadlock nor double-grant
        order = keys[index:] + keys[:index]
        gained[f"m{index}"] = takers[index].leases.take(f"m{index}", order, LONG)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(takers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    owners = [(key, member) for member, got in gained.items() for key in got]
    assert sorted(key for key, _ in owners) == sorted(keys)  # every key once, none twice
    snapshot = takers[0].leases.snapshot()
    assert {key: snapshot[key].owner for key, _ in owners} == dict(owners)
    for store in takers:
        store.close()


def test_membership_by_database_clock(open_pg: Callable[..., PostgresStore]) -> None:
    leases = open_pg().leases
    leases.heartbeat("r1")
    leases.heartbeat("r2")
    assert leases.members(LONG) == ["r1", "r2"]
    leases.heartbeat("r1")
    assert set(leases.members(LONG)) == {"r1", "r2"}
    with pytest.raises(ValueError, match="alive_within"):
        leases.members(-1)


# --- connections and secrets --------------------------------------------------------------------


def test_a_unix_socket_uri_works(postgres_server: PostgresServer, database: str) -> None:
    with PostgresStore.open(postgres_server.socket_url(database)) as store:
        store.commit({"k": "v"})
        assert store.get("k") == "v"
        assert str(postgres_server.socket_dir) in store.name


def test_credentials_from_pg_environment_variables(
    postgres_server: PostgresServer, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    monkeypatch.setenv("PGUSER", "postgres")
    with PostgresStore.open(f"postgresql://127.0.0.1:{postgres_server.port}/{database}") as store:
        store.commit({"k": "v"})
        assert store.get("k") == "v"
        assert PASSWORD not in repr(store)


def test_the_password_never_appears_in_errors(postgres_server: PostgresServer, database: str) -> None:
    wrong = "Wr0ng-" + PASSWORD
    with pytest.raises(StoreUnavailable) as refused:
        PostgresStore.open(f"postgresql://postgres:{wrong}@127.0.0.1:{postgres_server.port}/{database}")
    assert "password authentication failed" in str(refused.value)
    assert wrong not in str(refused.value) and "127.0.0.1" in str(refused.value)
    # libpq quotes a badly encoded password back: the store must not
    with pytest.raises(CheckpointError) as invalid:
        PostgresStore.open(f"postgresql://postgres:{PASSWORD}%zz@127.0.0.1/{database}")
    assert "percent-encoded" in str(invalid.value) and PASSWORD not in str(invalid.value)


def test_a_restarted_database_is_unavailable_then_recovers() -> None:
    server = PostgresServer()  # its own server: stopping the session's would disturb other tests
    try:
        server.start()
        store = PostgresStore.open(server.url())
        leases = store.leases
        token = leases.take("me", ["k"], LONG)["k"]
        assert leases.commit("me", {"k": ("1", token)}) == set()
        server.stop()
        with pytest.raises(StoreUnavailable) as down:
            leases.commit("me", {"k": ("2", token)})
        assert "PostgreSQL (host=127.0.0.1" in str(down.value) and PASSWORD not in str(down.value)
        with pytest.raises(StoreUnavailable):
            store.get("k")  # still down: the reconnect fails cleanly too
        server.start()
        assert eventually(lambda: leases.commit("me", {"k": ("2", token)})) == set()
        assert store.get("k") == "2"
        store.close()
    finally:
        server.cleanup()


def test_sqlite_implements_the_lease_interface_for_one_replica(tmp_path: Path) -> None:
    with CheckpointStore.open(str(tmp_path / "cp.db")) as store:
        leases = store.leases
        assert leases.take("me", ["a", "b"], LONG) == {"a": 1, "b": 1}
        assert leases.take("me", ["a", "c"], LONG) == {"c": 1}
        leases.release("me", ["b"])
        assert leases.renew("me", LONG) == {"a": 1, "c": 1}
        assert leases.commit("me", {"a": ("10", 1), "c": ("3", 1)}) == set()
        assert store.all() == {"a": "10", "c": "3"}
        leases.heartbeat("me")
        assert leases.members(LONG) == ["me"]
        assert {k: v.owner for k, v in leases.snapshot().items()} == {"a": "me", "c": "me"}


# --- the lease table against a model -------------------------------------------------------------

MEMBER = st.sampled_from(["a", "b", "c"])
KEY = st.sampled_from(["k0", "k1", "k2", "k3"])
TTL = st.sampled_from([0.0, LONG])  # 0: expired at once by the database clock; LONG: held throughout
OPERATION = st.one_of(
    st.tuples(st.just("take"), MEMBER, st.lists(KEY, min_size=1, max_size=4), TTL),
    st.tuples(st.just("renew"), MEMBER, TTL),
    st.tuples(st.just("release"), MEMBER, st.lists(KEY, max_size=3)),
    st.tuples(st.just("commit"), MEMBER, st.dictionaries(KEY, st.integers(-1, 1), max_size=3)),
)


class LeaseModel:
    """What the lease table must do, in memory: owner, token and expiry per key, and the cursors."""

    def __init__(self) -> None:
        self.leases: dict[str, tuple[str | None, int, bool]] = {}
        self.cursors: dict[str, str] = {}

    def take(self, owner: str, keys: list[str], ttl: float) -> dict[str, int]:
        gained = {}
        for key in sorted(set(keys)):
            holder, token, expired = self.leases.get(key, (None, 0, True))
            if holder is None or expired:
                self.leases[key] = (owner, token + 1, ttl == 0)
                gained[key] = token + 1
        return gained

    def renew(self, owner: str, ttl: float) -> dict[str, int]:
        held = {k: t for k, (o, t, _) in self.leases.items() if o == owner}
        self.leases.update({k: (owner, t, ttl == 0) for k, t in held.items()})
        return held

    def release(self, owner: str, keys: list[str]) -> None:
        for key in keys:
            holder, token, _ = self.leases.get(key, (None, 0, True))
            if holder == owner:
                self.leases[key] = (None, token, True)

    def commit(self, owner: str, cursors: dict[str, tuple[str, int]]) -> set[str]:
        refused = set()
        for key, (cursor, token) in cursors.items():
            holder, current, _ = self.leases.get(key, (None, 0, True))
            if holder == owner and token == current:
                self.cursors[key] = cursor
            else:
                refused.add(key)
        return refused


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(OPERATION, min_size=1, max_size=25))
def test_the_lease_table_behaves_like_its_model(
    postgres_server: PostgresServer,
    database: str,
    open_pg: Callable[..., PostgresStore],
    operations: list[tuple[Any, ...]],
) -> None:
    store = open_pg()
    with psycopg.connect(postgres_server.url(database), autocommit=True) as conn:
        conn.execute("TRUNCATE leases, cursors")  # one database for every example: start each empty
    model, leases = LeaseModel(), store.leases
    for step, (name, member, *args) in enumerate(operations):
        if name == "commit":
            tokens = {k: (f"c{step}", model.leases.get(k, (None, 0, True))[1] + off) for k, off in args[0].items()}
            assert leases.commit(member, tokens) == model.commit(member, tokens), (step, name)
        else:
            assert getattr(leases, name)(member, *args) == getattr(model, name)(member, *args), (step, name)
    snapshot = leases.snapshot()
    assert {k: (v.owner, v.token, v.expired) for k, v in snapshot.items()} == model.leases
    assert store.all() == model.cursors
