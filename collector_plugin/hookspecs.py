"""Hook specifications: the contract between the receiver and its plugins.

Built-in sources implement these hooks exactly as a third-party package does; a package exposes
its plugin module through the ``collector_plugin`` entry point group. Every hook here is
documented in README.md under "Plugin hooks" (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collector_plugin.source import Source

PROJECT_NAME = "collector_plugin"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_sources(register: Callable[[type[Source]], None]) -> None:
    """Register source classes with the receiver.

    Called once when the plugin manager is built. Call ``register(SourceClass)`` for each
    source the plugin provides; the class's ``name`` is its key under ``sources:`` in the config.

    :param register: Callable that takes a source class; raises ``ValueError`` when another
        plugin already registered a source of that name.
    :returns: Nothing; results are ignored.
    """
