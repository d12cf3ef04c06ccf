"""The SQLite checkpoint store: round trips, atomic commits, and loud failures (never a reset)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_plugin.checkpoint import CheckpointStore
from collector_plugin.errors import CheckpointError
from collector_plugin.testing import MemoryCheckpointStore


def test_round_trip_survives_reopen_and_creates_parent_dirs(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "checkpoints.db"
    with CheckpointStore.open(str(path)) as store:
        assert store.all() == {}
        store.commit({"training_task_logs/job-1/worker-0": '{"offset": 10}', "events/job-1": '{"n": 3}'})
        store.commit({"training_task_logs/job-1/worker-0": '{"offset": 25}'})
    with CheckpointStore.open(str(path)) as store:
        assert store.get("training_task_logs/job-1/worker-0") == '{"offset": 25}'
        assert store.get("missing") is None
        assert store.all() == {"training_task_logs/job-1/worker-0": '{"offset": 25}', "events/job-1": '{"n": 3}'}


def test_uses_wal_journaling(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    CheckpointStore.open(str(path)).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_garbage_file_is_a_clear_error_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    garbage = b"this is not sqlite" * 100
    path.write_bytes(garbage)
    with pytest.raises(CheckpointError) as info:
        CheckpointStore.open(str(path))
    assert str(path) in str(info.value)
    assert "backup" in str(info.value)
    assert path.read_bytes() == garbage


def test_corrupt_pages_are_detected_on_open(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with CheckpointStore.open(str(path)) as store:
        store.commit({f"target-{i}": "x" * 300 for i in range(300)})
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(page, len(data), page):
        data[offset + 8 : offset + 200] = b"\xff" * 192
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt|not a readable"):
        CheckpointStore.open(str(path))


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(CheckpointError, match="not a checkpoint store"):
        CheckpointStore.open(str(path))


def test_directory_as_path_and_file_as_parent_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        CheckpointStore.open(str(tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot create the directory"):
        CheckpointStore.open(str(blocker / "sub" / "c.db"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match=str(ro)):
            CheckpointStore.open(str(ro / "c.db"))
    finally:
        ro.chmod(0o700)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CheckpointStore]:
    s = CheckpointStore.open(str(tmp_path / "c.db"))
    yield s
    s.close()


def test_commit_is_all_or_nothing(store: CheckpointStore) -> None:
    store.commit({"a": "1", "b": "1"})

    class Exploding(dict[str, str]):
        def items(self):  # type: ignore[no-untyped-def, override]
            yield "a", "2"
            yield "b", object()  # sqlite cannot bind this: fails after "a" was written

    with pytest.raises(CheckpointError):
        store.commit(Exploding({"a": "2", "b": "2"}))
    assert store.all() == {"a": "1", "b": "1"}


def test_full_disk_raises_checkpoint_error_and_keeps_previous_state(store: CheckpointStore) -> None:
    store.commit({"a": "1"})
    # A page limit makes SQLite answer SQLITE_FULL, as a full disk does.
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(CheckpointError, match="disk is full"):
        store.commit({"a": "2", **{f"k{i}": "v" * 2000 for i in range(50)}})
    assert store.all() == {"a": "1"}
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    store.commit({"a": "3"})
    assert store.get("a") == "3"


def test_read_only_file_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    CheckpointStore.open(str(path)).close()
    store = CheckpointStore(str(path), sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None))
    try:
        with pytest.raises(CheckpointError, match=r"read-only|readonly"):
            store.commit({"a": "1"})
        assert store.all() == {}
    finally:
        store.close()


cursor_maps = st.lists(st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=30), max_size=5), max_size=6)


@settings(max_examples=40, deadline=None)
@given(cursor_maps)
def test_store_matches_the_in_memory_model(
    tmp_path_factory: pytest.TempPathFactory, commits: list[dict[str, str]]
) -> None:
    path = tmp_path_factory.mktemp("prop") / "c.db"
    model = MemoryCheckpointStore()
    with CheckpointStore.open(str(path)) as store:
        for cursors in commits:
            store.commit(cursors)
            model.commit(cursors)
        assert store.all() == model.all()
    with CheckpointStore.open(str(path)) as reopened:
        assert reopened.all() == model.all()


def test_a_commit_survives_kill_9(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    path = tmp_path / "c.db"
    script = (
        "import sys\n"
        "from collector_plugin.checkpoint import CheckpointStore\n"
        "store = CheckpointStore.open(sys.argv[1])\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    store.commit({'t': str(i), 'other': 'x' * (i % 50)})\n"
        "    print(i, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        acknowledged = 0
        while acknowledged < 200:
            acknowledged = int(proc.stdout.readline())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with CheckpointStore.open(str(path)) as store:
        committed = int(store.get("t") or 0)
        assert committed >= acknowledged
        assert store.get("other") == "x" * (committed % 50)


def test_the_old_import_path_still_names_the_stores() -> None:
    from collector_plugin import checkpoint, store
    from collector_plugin.store import sqlite

    assert checkpoint.CheckpointStore is sqlite.CheckpointStore is store.CheckpointStore
    assert checkpoint.CursorStore is store.CursorStore
