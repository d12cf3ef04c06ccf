"""Our side of the throughput scenario for several commits, side by side in one session.

Run: ``python tests/benchmarks/ab.py REV [REV ...] [--rounds N] [--tasks N --mb M]``.

Each revision is checked out into a temporary git worktree and its receiver started from there
(``python -m collector_plugin.cli run`` imports the package from its working directory), against
this tree's simulator and sink, pinned as in ``run.py``. Rounds are interleaved (A B C, A B C) so
that a noisy machine shifts every revision alike. Printed per round: records/s, µs of CPU per
record, records per CPU-second, peak RSS. Not part of the pytest run.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from run import HERE, ROOT, Helpers, cpus, get_json, start_receiver, stop, throughput_config, wait_sink


def one(rev: str, tree: Path, workdir: Path, tasks: int, mb: float) -> dict[str, Any]:
    """One catch-up of ``tasks`` logs of ``mb`` MiB by the receiver of ``tree``."""
    helpers = Helpers(workdir)
    try:
        sim = helpers.start([str(HERE / "sim_server.py"), "throughput", "--tasks", str(tasks), "--mb", str(mb)], "sim")
        sink = helpers.start([str(HERE / "sink.py")], "sink")
        config = throughput_config(sim, sink["port"], workdir, f"ab-{rev}")
        get_json(f"http://127.0.0.1:{sim['control']}/reset", "POST")
        rx = start_receiver(config, workdir, f"ab-{rev}", cpus()[0], cwd=tree)
        try:
            stats = wait_sink(sink["port"], sim["lines"], timeout=300)
            cpu = rx.monitor.sample()
        finally:
            stop(rx.proc)
            rx.monitor.done.set()
        seconds = (stats["last_ns"] - rx.started_ns) / 1e9
        return {
            "records_per_s": stats["unique"] / seconds,
            "us_per_record": cpu / max(1, stats["unique"]) * 1e6,
            "records_per_cpu_s": stats["unique"] / cpu if cpu else 0.0,
            "peak_rss_mb": rx.monitor.peak_rss / 1e6,
            "lost": sim["lines"] - stats["unique"],
        }
    finally:
        helpers.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revs", nargs="+", help="git revisions (commits, branches, HEAD)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--mb", type=float, default=12.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        trees: dict[str, Path] = {}
        try:
            for rev in args.revs:
                trees[rev] = root / f"tree-{len(trees)}"
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(trees[rev]), rev], check=True
                )
            print(
                f"{'revision':<12} {'round':>5} {'records/s':>10} {'µs CPU/rec':>11} {'rec/CPU-s':>10} {'peak RSS':>9} {'lost':>5}"
            )
            for n in range(1, args.rounds + 1):
                for rev, tree in trees.items():
                    work = root / f"work-{n}-{rev.replace('/', '_')}"
                    work.mkdir()
                    r = one(rev.replace("/", "_"), tree, work, args.tasks, args.mb)
                    print(
                        f"{rev:<12} {n:>5} {r['records_per_s']:>10,.0f} {r['us_per_record']:>11.2f} "
                        f"{r['records_per_cpu_s']:>10,.0f} {r['peak_rss_mb']:>6.0f} MB {r['lost']:>5}",
                        flush=True,
                    )
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


if __name__ == "__main__":
    main()
