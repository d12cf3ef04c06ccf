"""Plugins: a third-party package installed for real, inline plugins, blocking, hook docs."""

from __future__ import annotations

import asyncio
import importlib
import inspect
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

from collector_plugin import hookspecs
from collector_plugin.config import parse_config
from collector_plugin.errors import ConfigError
from collector_plugin.hookspecs import hookimpl
from collector_plugin.plugins import BLOCK_ENV, DEFAULT_PLUGINS, get_plugin_manager, load_sources
from collector_plugin.source import Source, SourceConfig, SourceContext
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


def test_inline_plugin_registers_and_unregisters() -> None:
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


def test_duplicate_source_names_are_rejected() -> None:
    class Clash(_InlineSource):
        name: ClassVar[str] = "training_job_events"

    pm = get_plugin_manager(load_entry_points=False)
    plugin = _InlinePlugin(Clash)
    pm.register(plugin, name="clash")
    try:
        with pytest.raises(ValueError, match="'training_job_events' is already registered by"):
            load_sources(pm)
    finally:
        pm.unregister(plugin)


def test_a_source_without_a_name_is_rejected() -> None:
    class Nameless:
        pass

    pm = get_plugin_manager(load_entry_points=False)
    plugin = _InlinePlugin(Nameless)
    pm.register(plugin, name="nameless")
    try:
        with pytest.raises(ValueError, match="has no 'name'"):
            load_sources(pm)
    finally:
        pm.unregister(plugin)


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


def _hookspecs() -> list[Callable[..., Any]]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return [fn for _, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, marker)]


def test_every_hook_is_documented_in_the_readme() -> None:
    """README.md has a ``### name(arg, ...)`` heading per hook, arguments as in hookspecs.py."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^### (\w+\([^)]*\))\s*$", readme, flags=re.MULTILINE))
    specs = _hookspecs()
    assert specs
    for fn in specs:
        heading = f"{fn.__name__}({', '.join(inspect.signature(fn).parameters)})"
        assert heading in headings, f"README.md lacks the heading '### {heading}'"


def test_every_hook_docstring_documents_its_parameters() -> None:
    for fn in _hookspecs():
        doc = inspect.getdoc(fn) or ""
        assert doc.splitlines()[0], fn.__name__
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc, f"{fn.__name__}: no ':param {param}:'"
        assert ":returns:" in doc, fn.__name__
