"""``modelarts-receiver``: run, demo, tail, validate, simulate, sources.

A user mistake is one clear line (or one line per config problem) on stderr and a non-zero
exit, never a traceback. Exit codes: 0 done (or the reader of stdout went away, as with
``| head``); 1 with the reason on stderr; 2 a command-line mistake; 3 stopped with records left
unsent (the count is on stderr; their cursors are not committed, so they are read again).

Each command imports what it needs when it runs: ``--version`` or ``validate`` never pays for
the exporter, gRPC, the OTLP encoders or the simulator (``tests/test_import_time.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from collector_plugin.errors import ConfigError, ReceiverError

if TYPE_CHECKING:  # the modules behind the commands are imported by the commands that use them
    import asyncio

    from collector_plugin.journal import ReadJournal
    from collector_plugin.plugins import RegisteredSource
    from collector_plugin.records import Record, Span
    from collector_plugin.settings import Settings
    from collector_plugin.source import Command, Source

DEFAULT_CONFIG_ENV = "MODELARTS_RECEIVER_CONFIG"


def _config_path(args: argparse.Namespace) -> str:
    path = args.config or os.environ.get(DEFAULT_CONFIG_ENV)
    if not path:
        raise ReceiverError(f"no config file: pass --config FILE (or set {DEFAULT_CONFIG_ENV})")
    return str(path)


EXIT_UNSENT = 3


async def _run_until_signalled(receiver: Any, duration: float | None = None, stop: asyncio.Event | None = None) -> bool:
    import asyncio
    import signal

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    return bool(await receiver.run(stop))


def prepare_run(path: str, environ: Mapping[str, str]) -> Any:
    """Everything ``run`` does before polling: load and resolve the config, set up logging, wire.

    Every :class:`ConfigError` start-up can raise comes from here (or from
    :func:`load_settings`, which ``validate`` shares), so ``validate`` rejects the same configs.
    """
    from collector_plugin.logs import setup_logging
    from collector_plugin.plugins import load_sources
    from collector_plugin.receiver import build_receiver
    from collector_plugin.settings import load_settings

    registry = load_sources()
    settings = load_settings(path, registry, environ)
    setup_logging(settings.telemetry.log_level, settings.telemetry.log_format)
    return build_receiver(settings, registry)


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    receiver = prepare_run(_config_path(args), os.environ)
    tune_gc()
    clean = asyncio.run(_run_until_signalled(receiver))
    if clean:
        return 0
    unsent = receiver.summary.unsent if receiver.summary else "some"
    grace = float(receiver.config.shutdown.grace_period)
    print(
        f"error: {unsent} records left unsent when shutdown.grace_period ({grace:g}s) ran out;"
        " their cursors are not committed, so they are read again on the next start",
        file=sys.stderr,
    )
    return EXIT_UNSENT


GC_THRESHOLDS = (5_000, 20, 10)


def tune_gc() -> None:
    """Collect young objects every 5,000 net allocations instead of every 700.

    Shipping, a span's ~2,500 line tuples live until it is encoded and then go, all by refcount;
    at 700 the cyclic GC ran 3–4 times a span and walked every span in hand, and the full
    collections it led to walked the whole heap: ~25 % of the CPU while catching up (a 5,000
    threshold: 25 young collections a catch-up instead of 855; ``tests/benchmarks/RESULTS.md``,
    run F). Garbage in cycles is still collected, a little later; peak RSS did not move.
    """
    import gc

    gc.set_threshold(*GC_THRESHOLDS)


def cmd_validate(args: argparse.Namespace) -> int:
    from collector_plugin.plugins import load_sources
    from collector_plugin.settings import load_settings

    registry = load_sources()
    path = _config_path(args)
    settings = load_settings(path, registry, os.environ)
    names = ", ".join(settings.config.sources) or "none"
    print(f"{path}: valid ({len(settings.config.sources)} source(s) enabled: {names})")
    return 0


def health_url(listen: str) -> str:
    """Where ``/healthz`` answers for a ``telemetry.listen`` address, seen from the same host."""
    from collector_plugin.config import parse_listen_address

    host, port = parse_listen_address(listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Probe ``/healthz`` on the port the config listens on (the image's HEALTHCHECK)."""
    import urllib.error
    import urllib.request

    from collector_plugin.plugins import load_sources
    from collector_plugin.settings import load_settings

    settings = load_settings(_config_path(args), load_sources(), os.environ)
    if not settings.telemetry.listen:
        raise ReceiverError('telemetry.listen is "": there is no /healthz to check')
    url = health_url(settings.telemetry.listen)
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            print(f"{url}: {response.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise ReceiverError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    """List healthy plugins' sources; name each broken plugin on stderr and exit 1."""
    from collector_plugin.plugins import load_catalog

    catalog = load_catalog()
    width = max((len(name) for name in catalog.sources), default=4)
    for name, reg in catalog.sources.items():
        description = getattr(reg.cls, "description", "")
        print(f"{name:<{width}}  {reg.origin:<28}  {description}")
    for err in catalog.broken:
        print(f"error: {err}", file=sys.stderr)
    return 1 if catalog.broken else 0


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
    from pathlib import Path

    from collector_plugin.simulator.demo import receiver_config

    exporter = {"protocol": args.protocol, "endpoint": args.otlp_endpoint} if args.otlp_endpoint else {}
    return receiver_config(
        sim,
        checkpoint_path=str(Path(checkpoint_dir) / "checkpoints.db"),
        exporter=exporter,
        metrics_listen=args.metrics_listen or "",
    )


class PipeGuard:
    """A transport wrapper for printing: when the reader of stdout goes away, stop the receiver.

    Without it a closed pipe is an export failure retried for ever. The demo's checkpoints are
    thrown away at exit, so records after the close are counted as dropped, not kept for later.
    """

    def __init__(self, inner: Any, stop: asyncio.Event) -> None:
        self.inner = inner
        self.stop = stop
        self.closed = False
        self.dropped = 0

    async def send(self, payload: bytes, nrecords: int) -> int:
        if not self.closed:
            try:
                return int(await self.inner.send(payload, nrecords))
            except BrokenPipeError:
                self.closed = True
                self.stop.set()
        self.dropped += nrecords
        return 0

    async def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            await self.inner.close()


def demo_summary(summary: Any, guard: PipeGuard | None) -> str:
    """One line: records read by source, delivered, unsent, API calls."""
    by_source = ", ".join(f"{name} {n}" for name, n in sorted(summary.read_by_source.items())) or "none"
    dropped = guard.dropped if guard else 0
    closed = f", {dropped} not printed after the output closed" if guard and guard.closed else ""
    return (
        f"demo: {summary.read} records read ({by_source}); {summary.delivered - dropped} delivered,"
        f" {summary.unsent} unsent"
        f"{closed}; {summary.api_calls} API calls"
    )


async def _demo(sim: Any, config: Any, registry: Any, args: argparse.Namespace) -> tuple[bool, PipeGuard | None]:
    """Run the receiver against ``sim`` until the duration, a signal or a closed stdout."""
    import asyncio

    from collector_plugin.console import ConsoleTransport
    from collector_plugin.receiver import build_receiver

    stop = asyncio.Event()
    guard = None if args.otlp_endpoint else PipeGuard(ConsoleTransport(), stop)
    receiver = build_receiver(config, registry, transport=guard, environ={})
    target = args.otlp_endpoint or "this terminal"
    print(f"demo: simulator at {sim.url}, shipping records to {target} (Ctrl-C to stop)", file=sys.stderr)
    clean = await _run_until_signalled(receiver, args.duration, stop)
    if receiver.summary is not None:
        print(demo_summary(receiver.summary, guard), file=sys.stderr)
    return clean, guard


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio
    import tempfile

    from collector_plugin.config import parse_config
    from collector_plugin.logs import setup_logging
    from collector_plugin.plugins import load_sources
    from collector_plugin.simulator import Scenario, Simulator

    setup_logging("warning", "text")
    registry = load_sources()
    sim = Simulator(Scenario.default(seed=args.seed))
    sim.start()
    try:
        sim.start_growth(args.grow)
        with tempfile.TemporaryDirectory(prefix="modelarts-demo-") as tmp:
            config = parse_config(demo_config(sim, tmp, args), registry, environ={})
            clean, guard = asyncio.run(_demo(sim, config, registry, args))
    finally:
        sim.stop()
    if guard is not None and guard.closed:
        _silence_stdout()
    return 0 if clean else EXIT_UNSENT


class _Delivery:
    """:class:`~collector_plugin.source.Delivery` over a pipeline and its store."""

    def __init__(self, store: Any, pipeline: Any) -> None:
        self._store = store
        self._pipeline = pipeline

    def cursor(self, key: str) -> str | None:
        cursor: str | None = self._store.get(key)
        return cursor

    async def put(self, span: Span) -> None:
        await self._pipeline.put(span)

    async def flush(self, timeout: float) -> bool:
        flushed: bool = await self._pipeline.flush(timeout)
        return flushed


class _CommandContext:
    """A plugin command's view of the receiver: sources wired as ``run`` wires them, the console."""

    def __init__(self, settings: Settings, registry: Mapping[str, RegisteredSource]) -> None:
        from collector_plugin.receiver import build_connections, build_http
        from collector_plugin.telemetry import Metrics

        self.settings = settings
        self.registry = registry
        self.metrics = Metrics()
        self.http = build_http(settings.config, self.metrics)
        self.connections = build_connections(settings.config, self.http)
        self.color = sys.stdout.isatty()
        self.journal: ReadJournal | None = None

    @contextlib.asynccontextmanager
    async def delivery(self) -> AsyncIterator[_Delivery]:
        """The exporter and checkpoint store of the config, as ``run`` uses them."""
        from collector_plugin import __version__
        from collector_plugin.export import build_pipeline, make_transport
        from collector_plugin.journal import ReadJournal
        from collector_plugin.store import open_store

        config = self.settings.config
        store = open_store(config.checkpoint.model_copy(update={"path": self.settings.checkpoint_path}))
        pipeline = build_pipeline(
            config.exporter,
            store,
            self.metrics,
            {},
            scope_version=__version__,
            transport=make_transport(self.settings.exporter),
        )
        self.journal = ReadJournal(store)  # sources opened from now on stamp read times in the store
        await pipeline.start()
        try:
            yield _Delivery(store, pipeline)
        finally:
            await pipeline.close(float(config.shutdown.grace_period))
            self.journal = None
            store.close()

    def open_source(self, name: str, config: Mapping[str, Any]) -> Source:
        from collector_plugin.config import parse_source_config
        from collector_plugin.receiver import source_context

        if name not in self.registry:
            raise ConfigError([f"sources.{name}: no such source is registered"])
        cls = self.registry[name].cls
        validated = parse_source_config(name, cls.config_model, config)
        context = source_context(name, self.settings, self.http, self.connections, self.metrics, self.journal)
        return cls(validated, context)

    def print_record(self, record: Record, *, verbose: bool = False) -> None:
        from collector_plugin.console import format_record

        plain = isinstance(record.body, str) and not record.event_name and not verbose
        print(record.body if plain else format_record(record, color=self.color), flush=True)


def _plugin_command(command: Command) -> Callable[[argparse.Namespace], int]:
    """Run a plugin's command with the config given by ``--config`` (or the environment)."""

    def run(args: argparse.Namespace) -> int:
        import asyncio

        from collector_plugin.plugins import load_sources
        from collector_plugin.settings import load_settings

        registry = load_sources()
        settings = load_settings(_config_path(args), registry, os.environ)
        tune_gc()

        async def go() -> int:
            context = _CommandContext(settings, registry)
            try:
                return await command.run(args, context)
            finally:
                await context.http.aclose()

        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(go())
        return 130

    return run


def _silence_stdout() -> None:
    """The reader of stdout went away: point stdout at /dev/null so the exit flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line: the built-in commands, then the plugins' unless ``argv`` cannot reach them.

    argparse acts on the first argument before it reads the next, so when that is ``--version`` or
    a built-in command no plugin command can be reached or listed; leaving them out then changes
    nothing but the time (importing every plugin is most of a short command's).
    """
    from collector_plugin import __version__

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
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop by itself after this many seconds (default: run until Ctrl-C)",
    )
    p.add_argument("--otlp-endpoint", help="send to this OTLP endpoint instead of printing (default: print)")
    p.add_argument(
        "--protocol",
        choices=["grpc", "http/protobuf"],
        default="grpc",
        help="OTLP protocol for --otlp-endpoint (default: grpc)",
    )
    p.add_argument("--seed", type=int, default=0, help="simulator scenario seed (default: 0)")
    p.add_argument(
        "--grow", type=int, default=2000, help="log bytes per second each running task writes (default: 2000)"
    )
    p.add_argument("--metrics-listen", default="", help="serve /metrics here, e.g. 127.0.0.1:8888 (default: off)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("validate", help="check a config file; exit 1 listing every problem")
    p.add_argument("--config", "-c", help=f"config file (default: ${DEFAULT_CONFIG_ENV})")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("healthcheck", help="exit 0 when /healthz answers on the port the config listens on")
    p.add_argument("--config", "-c", help=f"config file (default: ${DEFAULT_CONFIG_ENV})")
    p.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for the answer (default: 4)")
    p.set_defaults(func=cmd_healthcheck)

    p = sub.add_parser("simulate", help="serve the built-in ModelArts simulator")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--seed", type=int, default=0, help="scenario seed (default: 0)")
    p.add_argument(
        "--grow", type=int, default=1000, help="log bytes per second each running task writes (default: 1000)"
    )
    p.add_argument("--flow-limit", help="APIG flow control: calls per credential, e.g. 10/s or 600/min (default: off)")
    p.add_argument(
        "--obs-lag", type=float, default=0.0, help="seconds the OBS copy of a task log trails the live log (default: 0)"
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("sources", help="list registered sources and where they come from")
    p.set_defaults(func=cmd_sources)

    if not argv or (argv[0] != "--version" and argv[0] not in sub.choices):
        _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the healthy plugins' commands; a broken plugin is left out here and named by ``sources``."""
    from collector_plugin.plugins import get_plugin_manager, load_commands

    commands, _ = load_commands(get_plugin_manager(), taken=set(sub.choices))
    for command in commands.values():
        p = sub.add_parser(command.name, help=command.help)
        command.add_arguments(p)
        p.add_argument("--config", "-c", help=f"config file (default: ${DEFAULT_CONFIG_ENV})")
        p.set_defaults(func=_plugin_command(command))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
    except BrokenPipeError:  # `tail ... | head`: the reader has what it wanted
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
