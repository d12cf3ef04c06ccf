"""Plugins: a third-party package installed for real, inline plugins, blocking, broken plugins."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pluggy
import pytest

from collector_plugin import cli
from collector_plugin.backoff import Backoff
from collector_plugin.cli import main
from collector_plugin.config import parse_config
from collector_plugin.errors import ConfigError, PluginError
from collector_plugin.hookspecs import hookimpl
from collector_plugin.http import HttpClients
from collector_plugin.plugins import (
    BLOCK_ENV,
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    get_plugin_manager,
    load_catalog,
    load_commands,
    load_sources,
)
from collector_plugin.source import Command, CommandContext, Source, SourceConfig, SourceContext
from collector_plugin.telemetry import Metrics
from collector_plugin.testing import source_context

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "third_party_source"
DIST = "modelarts-receiver-hello"
MODULE = "modelarts_receiver_hello"


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _forget_module() -> None:
    for name in [m for m in sys.modules if m == MODULE or m.startswith(MODULE + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """pip-install the example (offline, from a copy so the tree stays clean); uninstall after."""
    src = tmp_path_factory.mktemp("hello") / "third_party_source"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    result = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(src))
    assert result.returncode == 0, result.stdout + result.stderr
    _forget_module()
    try:
        yield
    finally:
        _pip("uninstall", "-y", DIST)
        _forget_module()


def _config(sources: dict[str, Any]) -> dict[str, Any]:
    return {"modelarts": {"region": "r", "project_id": "p", "auth": {"token": "t"}}, "sources": sources}


def test_installed_plugin_is_listed_with_its_distribution(installed_example: None) -> None:
    registry = load_sources()
    hello = registry["hello_probe"]
    assert hello.plugin == "hello"
    assert hello.origin == f"{DIST} 0.1.0"
    assert hello.cls.description
    assert {r.origin for n, r in registry.items() if n != "hello_probe"} == {"builtin"}


def test_sources_command_lists_the_installed_plugin(installed_example: None) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "collector_plugin.cli", "sources"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("hello_probe "))
    assert f"{DIST} 0.1.0" in line


def test_installed_plugin_config_validates(installed_example: None) -> None:
    registry = load_sources()
    config = parse_config(_config({"hello_probe": {"urls": ["http://127.0.0.1:9/a"]}}), registry, environ={})
    hello = config.sources["hello_probe"]
    assert (hello.urls, hello.start_at) == (["http://127.0.0.1:9/a"], "end")
    with pytest.raises(ConfigError) as err:
        parse_config(_config({"hello_probe": {"url": ["x"]}}), registry, environ={})
    assert err.value.problems == [
        "sources.hello_probe.urls: field required",
        "sources.hello_probe.url: unknown key; did you mean 'urls'?",
    ]


def test_installed_plugin_reader_yields_spans_and_resumes(installed_example: None) -> None:
    """The example runs on the public API alone: the context's HTTP client, cursors, records."""
    registry = load_sources()
    cls = registry["hello_probe"].cls
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(503 if request.url.path == "/down" else 204)

    async def run() -> list[Any]:
        context = source_context("hello_probe", clock_ns=lambda: 42, transport=httpx.MockTransport(answer))
        # The context's own client factory, with millisecond retry pauses instead of the default
        # 0.5 s doubling (six tries of the 503 cost ~8 s); the retries themselves are the same.
        context.http_client = HttpClients(
            Metrics(), transport=httpx.MockTransport(answer), retry=Backoff(initial=0.001, maximum=0.005)
        )
        config = cls.config_model.model_validate({"urls": ["http://127.0.0.1:9/up", "http://127.0.0.1:9/down"]})
        source = cls(config, context)
        targets = await source.targets()
        assert [t.key for t in targets] == ["hello_probe/http://127.0.0.1:9/up", "hello_probe/http://127.0.0.1:9/down"]
        reader = source.open(targets[0], None)
        spans = [s for _ in range(2) async for s in reader.poll()]
        resumed = source.open(targets[0], spans[-1].cursor)
        spans += [s async for s in resumed.poll()]
        spans += [s async for s in source.open(targets[1], None).poll()]
        await context.http_client.aclose()  # type: ignore[union-attr]
        return spans

    spans = asyncio.run(run())
    bodies = [s.records[0].body for s in spans]
    assert bodies[:3] == ["http://127.0.0.1:9/up: HTTP 204"] * 3
    assert bodies[3].startswith("http://127.0.0.1:9/down: ") and "503" in bodies[3]
    assert [json.loads(s.cursor)["count"] for s in spans] == [1, 2, 3, 1]
    assert len({s.records[0].uid for s in spans}) == 4
    assert spans[0].records[0].resource.as_dict() == {"service.name": "hello-probe"}  # nothing of Huawei
    assert seen.count("http://127.0.0.1:9/down") > 1  # a 503 was retried by the context's client


def test_block_env_keeps_an_installed_plugin_out(installed_example: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLOCK_ENV, "hello")
    registry = load_sources(get_plugin_manager())
    assert "hello_probe" not in registry
    assert "training_job_events" in registry


def test_block_env_keeps_a_builtin_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        BLOCK_ENV,
        " collector_plugin.sources.modelarts.events.source ,collector_plugin.sources.modelarts.service_updates",
    )
    registry = load_sources(get_plugin_manager(load_entry_points=False))
    assert set(registry) == {"training_task_logs", "training_job_logs_v1"}


class _InlineSource:
    name: ClassVar[str] = "inline_source"
    description: ClassVar[str] = "inline test source"
    config_model: ClassVar[type[SourceConfig]] = SourceConfig

    def __init__(self, config: Any, context: SourceContext) -> None:
        self.config = config


class _InlinePlugin:
    __name__ = "inline"

    def __init__(self, cls: type[Any]) -> None:
        self.cls = cls

    @hookimpl
    def register_sources(self, register: Callable[[type[Source]], None]) -> None:
        register(self.cls)


def test_hook_register_sources() -> None:
    """An inline plugin's ``register_sources`` is called through the hook and its source lands in
    the registry under its name, attributed to the plugin; unregistering removes it."""
    pm = get_plugin_manager(load_entry_points=False)
    plugin = _InlinePlugin(_InlineSource)
    pm.register(plugin, name="inline")
    try:
        registry = load_sources(pm)
        assert registry["inline_source"].cls is _InlineSource
        assert registry["inline_source"].origin == "inline"
        assert set(registry) == {
            "inline_source",
            *(r for r in load_sources(get_plugin_manager(load_entry_points=False))),
        }
    finally:
        pm.unregister(plugin)
    assert "inline_source" not in load_sources(pm)


class _Clash(_InlineSource):
    name: ClassVar[str] = "training_job_events"


class _Nameless:
    pass


class _RaisingPlugin:
    @hookimpl
    def register_sources(self, register: Callable[[type[Source]], None]) -> None:
        register(_InlineSource)
        raise RuntimeError("boom in the hook")


@pytest.mark.parametrize(
    ("plugin", "problem"),
    [
        (
            _InlinePlugin(_Clash),
            "source 'training_job_events' is already registered by collector_plugin.sources.modelarts.events.source",
        ),
        (_InlinePlugin(_Nameless), "has no 'name'"),
        (_RaisingPlugin(), "register_sources raised RuntimeError: boom in the hook"),
    ],
    ids=["clash", "nameless", "raises"],
)
def test_a_broken_plugin_is_set_aside_and_named(plugin: object, problem: str) -> None:
    pm = get_plugin_manager(load_entry_points=False)
    healthy = set(load_sources(pm))
    pm.register(plugin, name="broken")
    try:
        catalog = load_catalog(pm)
        assert set(catalog.sources) == healthy  # nothing of the broken plugin, all of the rest
        assert all(reg.plugin != "broken" for reg in catalog.sources.values())
        (err,) = catalog.broken
        assert err.plugin == "broken" and problem in err.problem
        assert str(err).endswith("block it with MODELARTS_RECEIVER_BLOCK_PLUGINS=broken")
        with pytest.raises(PluginError, match=re.escape(problem)):
            load_sources(pm)
    finally:
        pm.unregister(plugin)


def test_register_refuses_a_taken_name_with_value_error() -> None:
    """The hook spec promises ``register`` raises ValueError on a clash; a plugin may rely on it."""
    seen: list[BaseException] = []

    class Careful:
        @hookimpl
        def register_sources(self, register: Callable[[type[Source]], None]) -> None:
            try:
                register(_Clash)
            except ValueError as exc:
                seen.append(exc)

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Careful(), name="careful")
    assert [e.plugin for e in load_catalog(pm).broken] == ["careful"]
    assert len(seen) == 1 and "already registered" in str(seen[0])


def test_an_implementation_matching_no_hook_is_caught() -> None:
    class Typo:
        @hookimpl
        def register_source(self, register: Any) -> None:  # missing "s"
            raise AssertionError("never called")

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Typo(), name="typo")
    with pytest.raises(pluggy.PluginValidationError, match="register_source"):
        pm.check_pending()


def test_builtin_sources_are_plugins_like_any_other() -> None:
    pm = get_plugin_manager(load_entry_points=False)
    assert [pm.get_name(p) for p in pm.get_plugins() if pm.get_name(p) in DEFAULT_PLUGINS]
    registry = load_sources(pm)
    assert {"training_task_logs", "training_job_logs_v1", "training_job_events", "service_update_logs"} <= set(registry)
    assert all(r.origin == "builtin" for r in registry.values())


# --- broken installed plugins: every command stays a one-line error ----------------------------

_BROKEN_MODULES = {
    "import": ("raise ImportError('needs libbroken')\n", "cannot be loaded: ImportError: needs libbroken"),
    "hook": (
        "from collector_plugin.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef register_sources(register):\n    raise RuntimeError('hook exploded')\n",
        "register_sources raised RuntimeError: hook exploded",
    ),
    "clash": (
        "from collector_plugin.hookspecs import hookimpl\n\n"
        "class Copy:\n    name = 'training_job_events'\n\n"
        "@hookimpl\ndef register_sources(register):\n    register(Copy)\n",
        "source 'training_job_events' is already registered by collector_plugin.sources.modelarts.events.source",
    ),
}


@pytest.fixture(params=sorted(_BROKEN_MODULES))
def broken_plugin(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A plugin distribution on sys.path (a module plus a .dist-info naming it in our entry-point
    group: what pip would leave behind); yields the one error line every command must print."""
    kind = request.param
    code, problem = _BROKEN_MODULES[kind]
    module, dist = f"broken_{kind}_plugin", f"broken-{kind}"
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{module}.py").write_text(code, encoding="utf-8")
    info = site / f"broken_{kind}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{module} = {module}\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.delenv(BLOCK_ENV, raising=False)
    yield f"error: plugin '{module}': {problem}; uninstall {dist} or block it with {BLOCK_ENV}={module}"
    sys.modules.pop(module, None)


def _valid_config(tmp_path: Path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(
        "modelarts: {region: r, project_id: p, auth: {token: t}}\n"
        f"checkpoint: {{path: {tmp_path / 'cp.db'}}}\n"
        "telemetry: {listen: ''}\n",
        encoding="utf-8",
    )
    return str(path)


def test_sources_lists_healthy_plugins_and_names_the_broken_one(
    broken_plugin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sources"]) == 1
    out, err = capsys.readouterr()
    listed = {line.split()[0] for line in out.splitlines()}
    assert {"training_task_logs", "training_job_logs_v1", "training_job_events", "service_update_logs"} <= listed
    assert err.splitlines() == [broken_plugin]


@pytest.mark.parametrize("command", ["run", "validate"])
def test_run_and_validate_stop_with_one_line(
    command: str, broken_plugin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--config", _valid_config(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert (out, err.splitlines()) == ("", [broken_plugin])


def test_blocking_the_broken_plugin_as_the_hint_says_recovers(
    broken_plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(BLOCK_ENV, broken_plugin.rsplit("=", 1)[1])
    assert main(["validate", "--config", _valid_config(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


def test_a_broken_plugin_is_no_traceback_in_a_real_process(broken_plugin: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "collector_plugin.cli", "run", "--config", _valid_config(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stderr.splitlines()) == (1, [broken_plugin])


class _CommandPlugin:
    """An inline plugin contributing one CLI command that opens a source through its context."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.opened: list[str] = []

    @hookimpl
    def register_commands(self, register: Callable[[Command], None]) -> None:
        def add_arguments(p: argparse.ArgumentParser) -> None:
            p.add_argument("job")

        async def run(args: argparse.Namespace, ctx: CommandContext) -> int:
            source = ctx.open_source("training_job_events", {"jobs": [{"id": args.job}]})
            self.opened.append(type(source).__name__)
            return 7

        register(Command(self.name, "test command", add_arguments, run))


def test_hook_register_commands(tmp_path: Path) -> None:
    """A plugin's command is offered by the CLI, gets its sources wired from ``--config``, and a
    name clash sets the plugin aside instead of breaking the command line."""
    pm = get_plugin_manager(load_entry_points=False)
    taken = {"run", "validate"}
    commands, broken = load_commands(pm, taken)
    assert "tail" in commands and not broken  # the ModelArts plugin's own
    plugin, clash = _CommandPlugin("hello-cmd"), _CommandPlugin("validate")
    pm.register(plugin, name="cmd")
    pm.register(clash, name="clash")
    try:
        commands, broken = load_commands(pm, taken)
        assert "hello-cmd" in commands and "validate" not in commands
        assert [err.plugin for err in broken] == ["clash"] and "already taken" in str(broken[0])
        config = tmp_path / "c.yaml"
        config.write_text("modelarts: {region: r, project_id: p, endpoint: 'http://127.0.0.1:9', auth: {token: t}}\n")
        args = argparse.Namespace(job="j1", config=str(config))
        assert cli._plugin_command(commands["hello-cmd"])(args) == 7
        assert plugin.opened == ["EventsSource"]
    finally:
        pm.unregister(plugin)
        pm.unregister(clash)


def test_a_plugin_command_with_a_bad_source_config_names_the_key(tmp_path: Path) -> None:
    class Bad(_CommandPlugin):
        @hookimpl
        def register_commands(self, register: Callable[[Command], None]) -> None:
            async def run(args: argparse.Namespace, ctx: CommandContext) -> int:
                ctx.open_source("training_job_events", {"jobs": [{"idd": "x"}]})
                return 0

            register(Command("bad-cmd", "test", lambda p: None, run))

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Bad("bad-cmd"), name="bad")
    commands, _ = load_commands(pm, set())
    config = tmp_path / "c.yaml"
    config.write_text("modelarts: {region: r, project_id: p, endpoint: 'http://127.0.0.1:9', auth: {token: t}}\n")
    with pytest.raises(ConfigError) as err:
        cli._plugin_command(commands["bad-cmd"])(argparse.Namespace(config=str(config)))
    assert "sources.training_job_events.jobs[0].id: field required" in err.value.problems
