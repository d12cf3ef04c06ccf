"""``modelarts-receiver``: run, demo, tail, validate, simulate, sources.

A user mistake is one clear line (or one line per config problem) on stderr and a non-zero
exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collector_plugin import __version__
from collector_plugin.config import Config, load_config, parse_config
from collector_plugin.errors import ConfigError, ReceiverError
from collector_plugin.plugins import load_sources

DEFAULT_CONFIG_ENV = "MODELARTS_RECEIVER_CONFIG"


def _config_path(args: argparse.Namespace) -> str:
    path = args.config or os.environ.get(DEFAULT_CONFIG_ENV)
    if not path:
        raise ReceiverError(f"no config file: pass --config FILE (or set {DEFAULT_CONFIG_ENV})")
    return str(path)


async def _run_until_signalled(receiver: Any, duration: float | None = None) -> bool:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    return bool(await receiver.run(stop))


def cmd_run(args: argparse.Namespace) -> int:
    from collector_plugin.logs import setup_logging
    from collector_plugin.receiver import build_receiver

    registry = load_sources()
    config = load_config(_config_path(args), registry)
    setup_logging(config.telemetry.log_level, config.telemetry.log_format)
    receiver = build_receiver(config, registry)
    clean = asyncio.run(_run_until_signalled(receiver))
    return 0 if clean else 3


def cmd_validate(args: argparse.Namespace) -> int:
    registry = load_sources()
    path = _config_path(args)
    config = load_config(path, registry)
    names = ", ".join(config.sources) or "none"
    print(f"{path}: valid ({len(config.sources)} source(s) enabled: {names})")
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    registry = load_sources()
    width = max((len(name) for name in registry), default=4)
    for name, reg in registry.items():
        description = getattr(reg.cls, "description", "")
        print(f"{name:<{width}}  {reg.origin:<28}  {description}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from collector_plugin.simulator import FlowLimit, serve

    try:
        limit = FlowLimit.parse(args.flow_limit) if args.flow_limit else None
    except ValueError as exc:
        raise ReceiverError(f"--flow-limit: {exc}") from None
    if args.obs_lag < 0:
        raise ReceiverError("--obs-lag: must be >= 0 seconds")
    serve(port=args.port, host=args.host, seed=args.seed, grow_bps=args.grow, flow_limit=limit, obs_lag=args.obs_lag)
    return 0


def demo_config(sim: Any, checkpoint_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    """A receiver config that reads everything the simulator serves (the simulator's own)."""
    from collector_plugin.simulator.demo import receiver_config

    exporter = {"protocol": args.protocol, "endpoint": args.otlp_endpoint} if args.otlp_endpoint else {}
    return receiver_config(
        sim,
        checkpoint_path=str(Path(checkpoint_dir) / "checkpoints.db"),
        exporter=exporter,
        metrics_listen=args.metrics_listen or "",
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from collector_plugin.console import ConsoleTransport
    from collector_plugin.logs import setup_logging
    from collector_plugin.receiver import build_receiver
    from collector_plugin.simulator import Scenario, Simulator

    setup_logging("warning", "text")
    registry = load_sources()
    sim = Simulator(Scenario.default(seed=args.seed))
    sim.start()
    try:
        sim.start_growth(args.grow)
        with tempfile.TemporaryDirectory(prefix="modelarts-demo-") as tmp:
            config = parse_config(demo_config(sim, tmp, args), registry, environ={})
            transport = None if args.otlp_endpoint else ConsoleTransport()
            receiver = build_receiver(config, registry, transport=transport, environ={})
            target = args.otlp_endpoint or "this terminal"
            print(f"demo: simulator at {sim.url}, shipping records to {target} (Ctrl-C to stop)", file=sys.stderr)
            asyncio.run(_run_until_signalled(receiver, args.duration))
    finally:
        sim.stop()
    return 0


async def _tail(args: argparse.Namespace, config: Config) -> None:
    from collector_plugin.console import format_record
    from collector_plugin.receiver import build_client
    from collector_plugin.source import SourceContext
    from collector_plugin.telemetry import Metrics

    ma = config.modelarts
    client = build_client(config, Metrics())
    context = SourceContext(client=client, project_id=ma.project_id, region=ma.region)
    registry = load_sources()
    readers = []
    tasks_cfg = {"start_at": "beginning", "flush_after": "1s", "jobs": [{"id": args.job, "tasks": args.task or []}]}
    wanted = [("training_task_logs", tasks_cfg)]
    if args.events:
        wanted.append(("training_job_events", {"start_at": "beginning", "jobs": [{"id": args.job}]}))
    for name, raw in wanted:
        cls = registry[name].cls
        source = cls(cls.config_model.model_validate(raw), context)
        for target in await source.targets():
            readers.append(source.open(target, None))
    color = sys.stdout.isatty()
    try:
        while True:
            for reader in readers:
                async for span in reader.poll(draining=not args.follow):
                    for record in span.records:
                        plain = isinstance(record.body, str) and not record.event_name and not args.verbose
                        print(record.body if plain else format_record(record, color=color))
                    sys.stdout.flush()
            if not args.follow:
                return
            await asyncio.sleep(args.interval)
    finally:
        await client.aclose()


def cmd_tail(args: argparse.Namespace) -> int:
    registry = load_sources()
    config = load_config(_config_path(args), registry)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_tail(args, config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelarts-receiver",
        description="Ship Huawei Cloud ModelArts training logs, events and service updates over OTLP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the receiver (the service)")
    p.add_argument("--config", "-c", help=f"config file (default: ${DEFAULT_CONFIG_ENV})")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="start the built-in simulator and the receiver against it, printing records")
    p.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")
    p.add_argument("--otlp-endpoint", help="send to this OTLP endpoint instead of printing")
    p.add_argument("--protocol", choices=["grpc", "http/protobuf"], default="grpc")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grow", type=int, default=2000, help="log bytes per second each running task writes")
    p.add_argument("--metrics-listen", default="", help="serve /metrics here, e.g. 127.0.0.1:8888")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tail", help="print a training job's log (like kubectl logs)")
    p.add_argument("job", help="training job id")
    p.add_argument("--task", action="append", help="task name, e.g. worker-0 (repeatable; default: all)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--events", action="store_true", help="also print the job's events")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls with -f")
    p.add_argument("-v", "--verbose", action="store_true", help="prefix lines with time, level and task")
    p.add_argument("--config", "-c", help="config file whose modelarts: section gives endpoint and credentials")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("validate", help="check a config file; exit 1 listing every problem")
    p.add_argument("--config", "-c", help="config file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("simulate", help="serve the built-in ModelArts simulator")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grow", type=int, default=1000, help="log bytes per second each running task writes")
    p.add_argument("--flow-limit", help="APIG flow control: calls per credential, e.g. 10/s or 600/min (default: off)")
    p.add_argument("--obs-lag", type=float, default=0.0, help="seconds the OBS copy of a task log trails the live log")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("sources", help="list registered sources and where they come from")
    p.set_defaults(func=cmd_sources)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc.source}: invalid config", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except ReceiverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
