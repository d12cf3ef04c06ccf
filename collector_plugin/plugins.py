"""The plugin manager: built-in sources, entry-point plugins, and a typed view of the hooks.

The rest of the code never calls ``pm.hook`` directly; it asks :func:`load_sources` for the
registry. ``MODELARTS_RECEIVER_BLOCK_PLUGINS`` (comma-separated plugin names) keeps named
plugins from loading, built-in or not.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import pluggy

from collector_plugin import hookspecs
from collector_plugin.source import Source

DEFAULT_PLUGINS: tuple[str, ...] = (
    "collector_plugin.sources.modelarts.task_logs",
    "collector_plugin.sources.modelarts.job_logs_v1",
    "collector_plugin.sources.modelarts.events.source",
    "collector_plugin.sources.modelarts.service_updates",
)
BLOCK_ENV = "MODELARTS_RECEIVER_BLOCK_PLUGINS"


@dataclass(frozen=True)
class RegisteredSource:
    """A source class and where it came from (``builtin`` or the distribution that ships it)."""

    name: str
    cls: type[Source]
    plugin: str
    origin: str


def get_plugin_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    """Build a plugin manager with the built-in plugins and, by default, installed ones."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    blocked = {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}
    for name in blocked:
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if module_name in blocked:
            continue
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
    pm.check_pending()
    return pm


def _origin(pm: pluggy.PluginManager, plugin: object) -> str:
    for loaded, dist in pm.list_plugin_distinfo():
        if loaded is plugin:
            return f"{dist.project_name} {dist.version}"
    name = pm.get_name(plugin) or ""
    return "builtin" if name in DEFAULT_PLUGINS else name


def load_sources(pm: pluggy.PluginManager | None = None) -> dict[str, RegisteredSource]:
    """Collect every registered source, keyed by its config name."""
    pm = pm or get_plugin_manager()
    registry: dict[str, RegisteredSource] = {}
    for impl in pm.hook.register_sources.get_hookimpls():
        plugin_name = impl.plugin_name

        def register(cls: type[Source], _plugin: object = impl.plugin, _name: str = plugin_name) -> None:
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise ValueError(f"plugin {_name}: source class {cls!r} has no 'name'")
            if name in registry:
                raise ValueError(f"plugin {_name}: source {name!r} is already registered by {registry[name].plugin}")
            registry[name] = RegisteredSource(name, cls, _name, _origin(pm, _plugin))

        impl.function(register=register)
    return dict(sorted(registry.items()))
