"""The plugin manager: built-in sources, entry-point plugins, and a typed view of the hooks.

The rest of the code never calls ``pm.hook`` directly; it asks :func:`load_catalog` (or
:func:`load_sources`) for the registry. ``MODELARTS_RECEIVER_BLOCK_PLUGINS`` (comma-separated
plugin names) keeps named plugins from loading, built-in or not.

A broken third-party plugin (fails to import, raises in its hook, registers a source name that
is taken) is set aside as a :class:`PluginError` instead of taking every command down with a
traceback: ``sources`` lists the healthy ones and names the broken one, ``run`` and ``validate``
stop with its one-line error.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pluggy

from collector_plugin import hookspecs
from collector_plugin.errors import PluginError

if TYPE_CHECKING:  # the contracts (and pydantic) come with the plugins that implement them
    from collector_plugin.source import Command, Source

DEFAULT_PLUGINS: tuple[str, ...] = (
    "collector_plugin.sources.modelarts.task_logs",
    "collector_plugin.sources.modelarts.job_logs_v1",
    "collector_plugin.sources.modelarts.events.source",
    "collector_plugin.sources.modelarts.service_updates",
    "collector_plugin.sources.modelarts.tail",
    "collector_plugin.sources.modelarts.backfill",
)
BLOCK_ENV = "MODELARTS_RECEIVER_BLOCK_PLUGINS"
ENTRY_POINT_GROUP = "modelarts_otel_receiver.sources"


@dataclass(frozen=True)
class RegisteredSource:
    """A source class and where it came from (``builtin`` or the distribution that ships it)."""

    name: str
    cls: type[Source]
    plugin: str
    origin: str


class ReceiverPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers the plugins it could not load."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.broken: list[PluginError] = []


@dataclass(frozen=True)
class SourceCatalog:
    """Every source the healthy plugins registered, and the plugins that failed."""

    sources: dict[str, RegisteredSource]
    broken: list[PluginError] = field(default_factory=list)

    def raise_if_broken(self) -> None:
        if self.broken:
            raise self.broken[0]


def _blocked_names() -> set[str]:
    return {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}


def _load_entry_point(pm: ReceiverPluginManager, ep: importlib.metadata.EntryPoint) -> None:
    """Import and register one entry point; a failure is recorded, never raised."""
    dist = ep.dist.name if ep.dist is not None else ""
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
        plugin = pm.get_plugin(ep.name)
        if plugin is not None:
            try:
                pm.check_pending()
            except pluggy.PluginValidationError:
                pm.unregister(plugin)
                raise
    except Exception as exc:  # a third party's import or validation may fail in any way
        pm.broken.append(PluginError(ep.name, f"cannot be loaded: {type(exc).__name__}: {exc}", dist))


def get_plugin_manager(*, load_entry_points: bool = True) -> ReceiverPluginManager:
    """Build a plugin manager with the built-in plugins and, by default, installed ones."""
    pm = ReceiverPluginManager()
    pm.add_hookspecs(hookspecs)
    blocked = _blocked_names()
    for name in blocked:
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if module_name in blocked:
            continue
        pm.register(importlib.import_module(module_name), name=module_name)
    pm.check_pending()
    if load_entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if not pm.is_blocked(ep.name) and pm.get_plugin(ep.name) is None:
                _load_entry_point(pm, ep)
    return pm


def _origin(pm: pluggy.PluginManager, plugin: object) -> str:
    for loaded, dist in pm.list_plugin_distinfo():
        if loaded is plugin:
            return f"{dist.project_name} {dist.version}"
    name = pm.get_name(plugin) or ""
    return "builtin" if name in DEFAULT_PLUGINS else name


def _distribution(pm: pluggy.PluginManager, plugin: object) -> str:
    return next((dist.project_name for loaded, dist in pm.list_plugin_distinfo() if loaded is plugin), "")


def _sources_of(
    pm: pluggy.PluginManager, plugin: object, taken: dict[str, RegisteredSource]
) -> dict[str, RegisteredSource]:
    """Call ``register_sources`` of one plugin (through the hook); raise PluginError on trouble.

    A plugin's sources are accepted all or none, so a half-registered plugin never runs.
    """
    name = pm.get_name(plugin) or repr(plugin)
    origin = _origin(pm, plugin)
    mine: dict[str, RegisteredSource] = {}
    problems: list[str] = []

    def register(cls: type[Source]) -> None:
        source_name = getattr(cls, "name", None)
        if not isinstance(source_name, str) or not source_name:
            problems.append(f"source class {cls!r} has no 'name'")
        elif source_name in taken or source_name in mine:
            owner = taken[source_name].plugin if source_name in taken else name
            problems.append(f"source {source_name!r} is already registered by {owner}")
        else:
            mine[source_name] = RegisteredSource(source_name, cls, name, origin)
            return
        raise ValueError(f"plugin {name}: {problems[-1]}")

    others = [p for p in pm.get_plugins() if p is not plugin]
    caller = pm.subset_hook_caller("register_sources", remove_plugins=others)
    try:
        caller(register=register)
    except Exception as exc:  # a plugin's hook may fail in any way; it must not sink the rest
        if not problems:
            problems.append(f"register_sources raised {type(exc).__name__}: {exc}")
    if problems:
        raise PluginError(name, problems[0], _distribution(pm, plugin))
    return mine


def load_catalog(pm: pluggy.PluginManager | None = None) -> SourceCatalog:
    """Every source registered by a healthy plugin, keyed by its config name, plus the failures.

    Plugins are asked in registration order (built-ins first), so a clash names the newcomer.
    """
    pm = pm or get_plugin_manager()
    broken = list(pm.broken) if isinstance(pm, ReceiverPluginManager) else []
    registry: dict[str, RegisteredSource] = {}
    for impl in pm.hook.register_sources.get_hookimpls():
        try:
            registry.update(_sources_of(pm, impl.plugin, registry))
        except PluginError as err:
            broken.append(err)
    return SourceCatalog(dict(sorted(registry.items())), broken)


def load_sources(pm: pluggy.PluginManager | None = None) -> dict[str, RegisteredSource]:
    """The registry of sources; raise :class:`PluginError` when any plugin is broken."""
    catalog = load_catalog(pm)
    catalog.raise_if_broken()
    return catalog.sources


def load_commands(pm: pluggy.PluginManager, taken: set[str]) -> tuple[dict[str, Command], list[PluginError]]:
    """The CLI commands healthy plugins contribute (``taken``: names the CLI has itself).

    Like sources, a plugin's commands are taken all or none; a clash or a failing hook sets the
    plugin aside as a :class:`PluginError` instead of breaking the command line.
    """
    commands: dict[str, Command] = {}
    broken: list[PluginError] = []
    for impl in pm.hook.register_commands.get_hookimpls():
        plugin = impl.plugin
        name = pm.get_name(plugin) or repr(plugin)
        mine: dict[str, Command] = {}

        def register(command: Command, _mine: dict[str, Command] = mine, _name: str = name) -> None:
            if command.name in taken or command.name in commands or command.name in _mine:
                raise ValueError(f"command {command.name!r} is already taken")
            _mine[command.name] = command

        others = [p for p in pm.get_plugins() if p is not plugin]
        try:
            pm.subset_hook_caller("register_commands", remove_plugins=others)(register=register)
        except Exception as exc:  # a plugin's hook may fail in any way; it must not sink the CLI
            broken.append(PluginError(name, f"register_commands: {exc}", _distribution(pm, plugin)))
            continue
        commands.update(mine)
    return commands, broken
