"""API budget: ``python tests/benchmarks/bench_budget.py [--quick] [--seconds N] [--json FILE]``.

Two identical simulators (``sim_server.py budget``: 60 running jobs of one task whose logs grow
with ``t=<ns>`` lines, their events, 10 services whose updates stay RUNNING 65 s, more than two
of the default 30 s service poll intervals, then SUCCESS) behind a gateway limit of 8 calls/s
per AK. Against one, the receiver (the real CLI, discovery on for task logs, events and service
updates, default config otherwise) into a counting sink; against the other, at the same time and
for the same duration, the plain round-robin poller (``roundrobin.py``). Measured: lines
delivered, share of calls refused (the simulators' gateway counts), p99 freshness (a line's
``t=`` write time to its arrival), and service-update states missed: (service, update, result)
the simulator produced, up to one service poll interval plus 5 s before the end, that were not
delivered. The two run concurrently on the receiver's core, so each sees the same machine.

``python tests/benchmarks/bench_budget.py --sink`` is the sink process (it also prints its port
as one JSON line): ``sink.py``'s tally plus the service-update states that arrived.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import sink  # noqa: E402
from run import PY, ROOT, Helpers, base_config, cpus, get_json, pin, start_receiver, stop, table, verdict  # noqa: E402
from sink import Tally  # noqa: E402

FLOW_LIMIT = "8/s"
JOBS, SERVICES, GROW_BPS = 60, 10, 200
SERVICE_POLL = 30.0  # the receiver's default service poll interval
UPDATE_HOLD = 2 * SERVICE_POLL + 5
STALE_NS = int((60 + 10) * 1e9)  # the default max_poll_interval (an idle target backs off to it), plus a margin
MAX_REFUSED = 0.05
SERVICE_ID, UPDATE_TIME, UPDATE_RESULT = (
    "modelarts.service.id",
    "modelarts.service.update.time",
    "modelarts.service.update.result",
)


# --- the sink -----------------------------------------------------------------------------------


def _value(any_value: Any) -> str:
    kind = any_value.WhichOneof("value")
    return str(getattr(any_value, kind)) if kind else ""


class StateTally(Tally):
    """``sink.py``'s counts plus each (service, update time, result) delivered."""

    def _clear(self) -> None:
        super()._clear()
        self.states: set[tuple[str, int, str]] = set()

    def add(self, payload: bytes) -> None:
        super().add(payload)
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

        request = ExportLogsServiceRequest()
        request.ParseFromString(payload)
        found: list[tuple[str, int, str]] = []
        for rl in request.resource_logs:
            shared = {kv.key: _value(kv.value) for kv in rl.resource.attributes}
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    attrs = {**shared, **{kv.key: _value(kv.value) for kv in rec.attributes}}
                    if UPDATE_RESULT in attrs and SERVICE_ID in attrs:
                        found.append((attrs[SERVICE_ID], int(attrs[UPDATE_TIME]), attrs[UPDATE_RESULT].upper()))
        with self.lock:
            self.states.update(found)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        with self.lock:
            out["states"] = sorted(self.states)
        return out


def serve_sink() -> None:
    """``sink.serve`` with :class:`StateTally`; until SIGTERM."""
    sink.serve(StateTally())


# --- the run ------------------------------------------------------------------------------------


def sim_args() -> list[str]:
    return [
        str(HERE / "sim_server.py"),
        "budget",
        "--jobs",
        str(JOBS),
        "--services",
        str(SERVICES),
        "--grow-bps",
        str(GROW_BPS),
        "--update-hold",
        str(UPDATE_HOLD),
        "--flow-limit",
        FLOW_LIMIT,
    ]


def refused_share(stats: dict[str, Any]) -> tuple[int, int, float]:
    """(served, refused, refused / all) over the endpoints behind the gateway's flow control."""
    calls = gateway_calls(stats)
    served = sum(s for s, _ in calls.values())
    refused = sum(r for _, r in calls.values())
    return served, refused, refused / max(1, served + refused)


def gateway_calls(stats: dict[str, Any]) -> dict[str, list[int]]:
    """Calls per endpoint that pass the gateway's flow control (OBS reads and IAM do not)."""
    return {e: c for e, c in stats["calls"].items() if not e.startswith("/obs/") and "/auth/" not in e}


def transitions(produced: list[list[Any]], delivered: list[list[Any]], end_ns: int) -> dict[str, Any]:
    """Update states produced against those delivered.

    Missed: a RUNNING state the update left (SUCCESS came) without it being delivered, which no
    later poll can recover; or any state visible longer than ``max_poll_interval`` plus a margin
    yet not delivered. Pending: not delivered yet, but younger than that (it may still come).
    """
    got = {(s, int(t), r) for s, t, r in delivered}
    finished = {(s, int(t)) for s, t, r, _ in produced if r != "RUNNING"}
    missed, pending = [], []
    for s, t, r, at in produced:
        if (s, int(t), r) in got:
            continue
        left = r == "RUNNING" and (s, int(t)) in finished
        if left or at < end_ns - STALE_NS:
            missed.append([s, t, r, (end_ns - at) / 1e9])
        else:
            pending.append([s, t, r, (end_ns - at) / 1e9])
    return {"produced": len(produced), "missed": missed, "pending": pending}


def bench(workdir: Path, seconds: float) -> dict[str, Any]:
    helpers = Helpers(workdir)
    rr: subprocess.Popen[str] | None = None
    try:
        sim_a = helpers.start(sim_args(), "sim-ours")
        sim_b = helpers.start(sim_args(), "sim-roundrobin")
        sink = helpers.start([str(Path(__file__).resolve()), "--sink"], "sink-budget")
        config = base_config(sim_a, sink["port"], workdir, "budget")
        on = {"discovery": {"enabled": True}}
        config["sources"] = {"training_task_logs": on, "training_job_events": on, "service_update_logs": on}
        before_a = get_json(f"http://127.0.0.1:{sim_a['control']}/stats")["lines_written"]
        before_b = get_json(f"http://127.0.0.1:{sim_b['control']}/stats")["lines_written"]
        rx = start_receiver(config, workdir, "budget", cpus()[0])
        with open(workdir / "roundrobin.err", "ab") as err:
            rr = subprocess.Popen(
                [PY, str(HERE / "roundrobin.py"), "--sim", json.dumps(sim_b), "--seconds", str(seconds)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
                cwd=ROOT,
            )
        pin(rr.pid, cpus()[0])
        out, _ = rr.communicate(timeout=seconds + 120)  # the poller stops itself after ``seconds``
        end_ns = time.time_ns()
        ours_sink = get_json(f"http://127.0.0.1:{sink['port']}/stats")
        stats_a = get_json(f"http://127.0.0.1:{sim_a['control']}/stats")
        stats_b = get_json(f"http://127.0.0.1:{sim_b['control']}/stats")
        code = stop(rx.proc)
        rx.monitor.done.set()
        report = json.loads(out.strip().splitlines()[-1])
    finally:
        stop(rr)
        helpers.close()
    return {
        "seconds": seconds,
        "targets": 2 * JOBS + SERVICES,
        "flow_limit": FLOW_LIMIT,
        "ours": side(stats_a, before_a, ours_sink["delays"], ours_sink["delay_p99_ms"], ours_sink["states"], end_ns)
        | {"exit_code": code, "cpu_seconds": rx.monitor.cpu_last},
        "roundrobin": side(stats_b, before_b, report["lines"], report["delay_p99_ms"], report["states"], end_ns)
        | {"turns": report["turns"], "calls_given_up": report["errors"]},
    }


def side(
    sim: dict[str, Any], before: int, lines: int, p99: float | None, states: list[Any], end_ns: int
) -> dict[str, Any]:
    served, refused, share = refused_share(sim)
    return {
        "lines_written": sim["lines_written"] - before,
        "lines": lines,
        "served": served,
        "refused": refused,
        "refused_share": share,
        "p99_ms": p99,
        "states": transitions(sim["states"], states, end_ns),
        "obs_reads": sum(c[0] for e, c in sim["calls"].items() if e.startswith("/obs/")),
        "calls": sim["calls"],
    }


def print_report(r: dict[str, Any]) -> None:
    print(
        f"\n## API budget: {r['targets']} targets behind {r['flow_limit']} per AK, {r['seconds']:g} s, side by side\n"
    )
    o, n = r["ours"], r["roundrobin"]

    def p99(x: dict[str, Any]) -> str:
        return "n/a" if x["p99_ms"] is None else f"{x['p99_ms'] / 1000:.1f} s"

    def states(x: dict[str, Any]) -> str:
        st = x["states"]
        return f"{len(st['missed'])} of {st['produced']} ({len(st['pending'])})"

    rows = [
        [
            "lines delivered",
            f"{o['lines']:,} of {o['lines_written']:,}",
            f"{n['lines']:,} of {n['lines_written']:,}",
            "",
        ],
        [
            "calls served / refused",
            f"{o['served']:,} / {o['refused']:,}",
            f"{n['served']:,} / {n['refused']:,}",
            "",
        ],
        [
            "share refused",
            f"{o['refused_share']:.1%}",
            f"{n['refused_share']:.1%}",
            verdict(o["refused_share"] <= MAX_REFUSED, f"{o['refused_share']:.1%} > 5 %"),
        ],
        ["p99 freshness (write -> arrival)", p99(o), p99(n), ""],
        ["OBS reads (no API budget)", f"{o['obs_reads']:,}", f"{n['obs_reads']:,}", ""],
        [
            "update states missed (pending)",
            states(o),
            states(n),
            verdict(not o["states"]["missed"], f"{len(o['states']['missed'])} missed"),
        ],
    ]
    print(table(["measure", "ours", "round robin", "target (ours)"], rows))
    for name, x in (("ours", o), ("round robin", n)):
        for sid, t, r, age in x["states"]["missed"]:
            print(f"- {name} missed {sid} update {t} {r} (produced {age:.0f} s before the end)")
    print(f"\nround robin: {n['turns']} turns, {n['calls_given_up']} calls given up; ours exit code {o['exit_code']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 s instead of 90 s")
    parser.add_argument("--seconds", type=float, help="measure this long (overrides --quick)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sink:
        serve_sink()
        return 0
    seconds = args.seconds or (30.0 if args.quick else 90.0)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="modelarts-bench-budget-") as tmp:
        result = bench(Path(tmp), seconds)
    print_report(result)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
