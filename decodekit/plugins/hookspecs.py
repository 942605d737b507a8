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
def decodekit_register_strategies(register: Callable[[type["Decoder"]], None]) -> None:
    """Register decoding strategies.

    When: once, the first time decodekit needs its strategy registry (the first generate(),
    list_strategies() or CLI command of a process), for every plugin that is loaded.

    register: call it once per strategy with a `decodekit.Decoder` subclass. The class's `name`
    (unique across all plugins; a duplicate is refused), `capabilities` and `Params` are read then.

    Returns nothing. An exception raised here is reported with the plugin's name, and that plugin's
    strategies are left out; decodekit and the other plugins keep working.
    """
