"""Journal cost: ``python tests/benchmarks/bench_journal.py [--quick] [--rounds N] [--json FILE]``.

The read-time journal writes ``[start, end) → time`` to the checkpoint store before every span of
a log goes out, so a replay gets the same observed time (tests/test_replay.py). What does that
cost? The throughput scenario of ``run.py`` (``sim_server.py throughput``: task logs read from
``start_at: beginning`` into ``sink.py``), the real CLI once with the journal as shipped
(SQLite-backed) and once with a journal that remembers nothing (``NullJournal``: the same
``LogTimes`` logic in memory, no store writes), alternating ``off, on`` for ``--rounds`` rounds
in one run so both see the same machine. Each run starts from a fresh checkpoint file. Reported
per mode: median records/s (receiver start → last record at the sink) and records per CPU-second
of the receiver (user+system, psutil); the cost is the median's drop from off to on.

``python tests/benchmarks/bench_journal.py --receiver on|off --config FILE`` is the receiver
process itself: ``collector_plugin.cli run``, with ``NullJournal`` injected when ``off``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import PY, ROOT, Helpers, Monitor, base_config, cpus, get_json, pin, stop, table, verdict, wait_sink  # noqa: E402

TARGET_COST = 0.05


class NullJournal:
    """A journal backend that stores nothing: read times live only in the reader's memory."""

    def read_times(self, key: str) -> list[tuple[int, int, int]]:
        return []

    def add_read_time(self, key: str, start: int, end: int, time_ns: int) -> None:
        pass

    def prune_read_times(self, key: str, below: int) -> None:
        pass


def receiver_main(mode: str, config: str) -> int:
    """Run the CLI; ``off`` makes ``build_receiver`` hand sources a journal over ``NullJournal``."""
    import collector_plugin.receiver as receiver
    from collector_plugin.cli import main
    from collector_plugin.journal import ReadJournal

    if mode == "off":
        receiver.ReadJournal = lambda store=None: ReadJournal(NullJournal())  # type: ignore[assignment,misc]
    return main(["run", "--config", config])


def one_run(
    helpers: Helpers, sim: dict[str, Any], sink_port: int, workdir: Path, name: str, mode: str
) -> dict[str, Any]:
    config = base_config(sim, sink_port, workdir, name)
    config["sources"]["training_task_logs"] = {
        "poll_interval": "1s",
        "start_at": "beginning",
        "jobs": [{"id": job, "tasks": names} for job, names in sim["jobs"].items()],
    }
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config))
    get_json(f"http://127.0.0.1:{sink_port}/reset", "POST")
    log = workdir / f"{name}.log"
    started = time.time_ns()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [PY, str(Path(__file__).resolve()), "--receiver", mode, "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
    pin(proc.pid, cpus()[0])
    monitor = Monitor(proc.pid)
    monitor.start()
    try:
        stats = wait_sink(sink_port, sim["lines"], timeout=300)
        cpu = monitor.sample()
    finally:
        code = stop(proc)
        monitor.done.set()
    seconds = (stats["last_ns"] - started) / 1e9
    with contextlib.closing(sqlite3.connect(workdir / f"{name}.db")) as db:  # proves the mode: 0 rows when off
        rows = db.execute("SELECT COUNT(*) FROM read_times").fetchone()[0]
    return {
        "mode": mode,
        "unique": stats["unique"],
        "lost": sim["lines"] - stats["unique"],
        "seconds": seconds,
        "records_per_s": stats["unique"] / seconds,
        "cpu_seconds": cpu,
        "records_per_cpu_s": stats["unique"] / cpu if cpu else 0.0,
        "exit_code": code,
        "journal_rows": rows,
    }


def bench(workdir: Path, quick: bool, rounds: int) -> dict[str, Any]:
    tasks, mb = (4, 3.0) if quick else (8, 6.0)
    helpers = Helpers(workdir)
    runs: list[dict[str, Any]] = []
    try:
        sim = helpers.start([str(HERE / "sim_server.py"), "throughput", "--tasks", str(tasks), "--mb", str(mb)], "sim")
        sink = helpers.start([str(HERE / "sink.py")], "sink")
        for i in range(rounds):
            for mode in ("off", "on"):
                runs.append(one_run(helpers, sim, sink["port"], workdir, f"{mode}-{i}", mode))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    finally:
        helpers.close()
    summary: dict[str, Any] = {"tasks": tasks, "mb_per_task": mb, "lines": sim["lines"], "rounds": rounds, "runs": runs}
    for mode in ("off", "on"):
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {
            "records_per_s": statistics.median(r["records_per_s"] for r in mine),
            "records_per_cpu_s": statistics.median(r["records_per_cpu_s"] for r in mine),
            "lost": sum(r["lost"] for r in mine),
            "journal_rows": max(r["journal_rows"] for r in mine),
        }
    for key in ("records_per_s", "records_per_cpu_s"):
        summary[f"cost_{key}"] = 1 - summary["on"][key] / summary["off"][key]
    return summary


def report(r: dict[str, Any]) -> None:
    print(
        f"\n## Journal cost ({r['tasks']} tasks x {r['mb_per_task']:g} MiB, {r['lines']:,} lines, {r['rounds']} rounds)\n"
    )
    rows = [
        [
            f"journal {mode}",
            f"{r[mode]['records_per_s']:,.0f}",
            f"{r[mode]['records_per_cpu_s']:,.0f}",
            r[mode]["lost"],
            r[mode]["journal_rows"],
            " ".join(f"{x['records_per_s']:,.0f}" for x in r["runs"] if x["mode"] == mode),
        ]
        for mode in ("off", "on")
    ]
    print(
        table(
            [
                "mode",
                "records/s (median)",
                "records per CPU-s (median)",
                "lost",
                "journal rows left",
                "records/s of each run",
            ],
            rows,
        )
    )
    wall, cpu = r["cost_records_per_s"], r["cost_records_per_cpu_s"]
    print(f"\ncost of the journal: {wall:+.1%} records/s, {cpu:+.1%} records per CPU-second")
    print(f"- target <= 5 % of throughput: {verdict(max(wall, cpu) <= TARGET_COST, f'{max(wall, cpu):.1%}')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--receiver", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver:
        return receiver_main(args.receiver, args.config)
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
        result = bench(Path(tmp), args.quick, args.rounds)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
