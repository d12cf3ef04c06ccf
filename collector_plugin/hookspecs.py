"""Hook specifications: the contract between the receiver and its plugins.

Built-in sources implement these hooks exactly as a third-party package does; a package exposes
its plugin module through the ``modelarts_otel_receiver.sources`` entry point group
(``collector_plugin.plugins.ENTRY_POINT_GROUP``). Every hook here is documented in README.md
under "Plugin hooks" and has a ``test_hook_<name>`` test (tests/test_docs.py checks both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collector_plugin.source import Command, Source

PROJECT_NAME = "collector_plugin"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_sources(register: Callable[[type[Source]], None]) -> None:
    """Register source classes with the receiver.

    Called once per plugin when the registry is built, built-in plugins first. Call
    ``register(SourceClass)`` for each source the plugin provides; the class's ``name`` is its
    key under ``sources:`` in the config. A plugin's sources are taken all or none: if the hook
    raises or a name is refused, the plugin is reported as broken and none of its sources load.

    :param register: Callable that takes a source class; raises ``ValueError`` when the class
        has no ``name`` or another plugin already registered a source of that name.
    :returns: Nothing; results are ignored.
    """


@hookspec
def register_commands(register: Callable[[Command], None]) -> None:
    """Register CLI commands the plugin contributes, next to ``run``, ``validate`` and the rest.

    Called once per plugin when the command line is built. Call ``register(Command(...))`` for
    each command; its ``run`` gets the parsed arguments and a
    :class:`~collector_plugin.source.CommandContext` that opens the plugin's sources from the
    config given with ``--config``, as ``run`` would. The ModelArts plugin contributes ``tail``.

    :param register: Callable that takes a :class:`~collector_plugin.source.Command`; raises
        ``ValueError`` when the command name is taken.
    :returns: Nothing; results are ignored.
    """
