"""The hooks a decodekit plugin may implement. Every hook is documented in docs/plugin-hooks.md.

A plugin is a module (or object) with functions marked `@decodekit.hookimpl`, made known through
the entry-point group `decodekit`:

    [project.entry-points.decodekit]
    my-strategies = "my_package.plugin"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from decodekit.core.decoder import Decoder

PROJECT = "decodekit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def decodekit_register_strategies(register: Callable[[type[Decoder]], None]) -> None:
    """Register decoding strategies.

    When: once per process, the first time decodekit needs its strategy registry (the first
    generate(), list_strategies() or CLI command), for every loaded plugin in turn: the built-in
    strategies (plugin `decodekit.strategies`) first, then the installed plugins in entry-point
    order. The registry is then cached; `decodekit.plugins.manager.get_registry.cache_clear()`
    rebuilds it, calling the hook again.

    register: call it once per strategy with a `decodekit.Decoder` subclass. The class's `name`
    (unique across all plugins), `capabilities` (a `decodekit.Capabilities`) and `Params` (an attrs
    class, `decodekit.param` fields) are checked then; a duplicate name or an invalid class makes
    `register` raise `decodekit.errors.PluginError`.

    Returns nothing (a return value is ignored). An exception raised here, by the plugin or by
    `register`, is reported in a warning naming the plugin, and all of that plugin's strategies are
    left out; decodekit and the other plugins keep working (`decodekit strategies` lists the failure).
    """
