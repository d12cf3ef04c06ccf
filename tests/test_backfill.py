"""``modelarts-receiver backfill JOB``: a job's whole log once, acknowledged, resumable, shared with run."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from rotel_harness import RotelCollector

from collector_plugin.cli import main
from collector_plugin.records import Record, Span
from collector_plugin.simulator import Scenario, Simulator
from collector_plugin.sources.modelarts.backfill import Since, line_time, parse_since
from collector_plugin.store.sqlite import CheckpointStore

JOB = "job-backfill"


def config_file(tmp: Path, sim: Simulator, endpoint: str) -> Path:
    config = {
        "modelarts": {
            "region": "sim-1",
            "endpoint": sim.url,
            "project_id": sim.project_id,
            "auth": {"ak": sim.ak, "sk": sim.sk},
        },
        "exporter": {"protocol": "grpc", "endpoint": endpoint, "compression": "none", "batch": {"max_delay": "20ms"}},
        "checkpoint": {"path": str(tmp / "cp.db")},
        "telemetry": {"listen": ""},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.e2e
def test_backfill_ships_every_line_once_and_resumes_from_its_cursor(tmp_path: Path) -> None:
    scenario = Scenario()
    job = scenario.add_job(JOB, name="bf", tasks=("worker-0", "worker-1"))
    for task in ("worker-0", "worker-1"):
        job.task(task).append(b"".join(b"%s line %d\n" % (task.encode(), i) for i in range(3000)))
    job.task("worker-1").append(b"no newline yet")
    collector = RotelCollector(tmp_path / "rotel")
    collector.start()
    try:
        with Simulator(scenario) as sim:
            config = config_file(tmp_path, sim, collector.grpc_endpoint)
            assert main(["backfill", JOB, "--config", str(config), "--no-progress"]) == 0
            job.task("worker-0").append(b"worker-0 line 3000\n")
            assert main(["backfill", JOB, "--config", str(config), "--no-progress"]) == 0  # resumes: only the new line
            assert main(["backfill", "no-such-job", "--config", str(config), "--no-progress"]) == 1
        collector.stop()  # rotel prints what it acknowledged before it exits
        received = collector.records()
    finally:
        collector.stop()
    bodies = [r["body"] for r in received]
    expected = [f"worker-0 line {i}" for i in range(3001)] + [f"worker-1 line {i}" for i in range(3000)]
    assert sorted(bodies) == sorted([*expected, "no newline yet"])  # every line exactly once
    with CheckpointStore.open(str(tmp_path / "cp.db")) as store:
        cursors = store.all()
    assert {key.rsplit("/", 1)[1] for key in cursors} == {"worker-0", "worker-1"}  # run resumes after them


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", datetime(2026, 12, 2, 10, 0, tzinfo=timezone.utc)),
        ("30m", datetime(2026, 12, 2, 11, 30, tzinfo=timezone.utc)),
        ("1.5d", datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc)),
        ("2026-12-01T10:00:00Z", datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)),
        ("2026-12-01 10:00", datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)),  # no zone: UTC
        ("2026-12-01T18:00:00+08:00", datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)),
    ],
)
def test_since_takes_a_duration_ago_or_an_iso_time(text: str, expected: datetime) -> None:
    assert parse_since(text, now=datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)) == expected


def test_a_bad_since_names_the_option_and_the_forms() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"--since 'yesterday': expected a duration ago .* ISO-8601"):
        parse_since("yesterday")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2026-12-01 10:00:00,123 INFO step 1", datetime(2026, 12, 1, 10, 0, 0, 123000, tzinfo=timezone.utc)),
        ("[2026-12-01T10:00:00Z] loss=0.1", datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)),
        ("2026-12-01T18:00:00.5+08:00 x", datetime(2026, 12, 1, 10, 0, 0, 500000, tzinfo=timezone.utc)),
        ("Traceback (most recent call last):", None),
        ("  File 2026-12-01 10:00:00", None),  # a time further in is not the line's own
    ],
)
def test_a_line_time_is_the_timestamp_it_starts_with(line: str, expected: datetime | None) -> None:
    assert line_time(line) == expected


@given(st.lists(st.one_of(st.none(), st.integers(0, 50)), max_size=40), st.integers(0, 50), st.integers(1, 5))
def test_since_skips_exactly_the_lines_before_the_first_stamped_at_or_after(
    stamps: list[int | None], since_minute: int, per_span: int
) -> None:
    """However the log is cut into spans: lines before the first line stamped >= T are dropped,
    everything from it on is kept (unstamped lines too), notices always; each span keeps its cursor."""
    base = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
    bodies = [
        f"line {i}" if m is None else f"{(base + timedelta(minutes=m)).isoformat()} line {i}"
        for i, m in enumerate(stamps)
    ]
    records = [Record(body=b, uid=str(i), observed_ns=0) for i, b in enumerate(bodies)]
    notice = Record(body="log drained", uid="n", observed_ns=0, event_name="modelarts.log.complete")
    spans = [Span("k", records[i : i + per_span], f"c{i}") for i in range(0, len(records), per_span)]
    spans.append(Span("k", [notice], "end"))
    since = Since(base + timedelta(minutes=since_minute))
    out = [since.span(span) for span in spans]
    first = next((i for i, m in enumerate(stamps) if m is not None and m >= since_minute), len(stamps))
    assert [r.body for span in out for r in span.records] == [*bodies[first:], "log drained"]
    assert [span.cursor for span in out] == [span.cursor for span in spans]
    assert since.skipped == first and since.started == (first < len(stamps))


@pytest.mark.e2e
def test_backfill_since_ships_from_the_first_line_at_or_after_it(tmp_path: Path) -> None:
    scenario = Scenario()
    job = scenario.add_job(JOB, name="bf", tasks=("worker-0", "worker-1"))
    job.task("worker-0").append(
        b"".join(b"2026-12-01 %02d:00:00 INFO step %d\n" % (h, h) for h in range(8))
        + b"Traceback (most recent call last):\n  in step 8\n2026-12-01 09:00:00 INFO done\n"
    )
    job.task("worker-1").append(b"no timestamps here\n")
    collector = RotelCollector(tmp_path / "rotel")
    collector.start()
    try:
        with Simulator(scenario) as sim:
            config = config_file(tmp_path, sim, collector.grpc_endpoint)
            argv = ["backfill", JOB, "--config", str(config), "--no-progress"]
            assert main([*argv, "--since", "2026-12-01T06:00:00Z"]) == 0
            job.task("worker-1").append(b"after the backfill\n")
            assert main(argv) == 0  # what --since skipped is committed: only the new line goes
        collector.stop()
        received = sorted(str(r["body"]) for r in collector.records())
    finally:
        collector.stop()
    shipped = ["2026-12-01 06:00:00 INFO step 6", "2026-12-01 07:00:00 INFO step 7"]
    shipped += ["Traceback (most recent call last):", "  in step 8", "2026-12-01 09:00:00 INFO done"]
    assert received == sorted([*shipped, "after the backfill"])
