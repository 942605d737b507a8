"""The plugin-manager factory and the strategy registry built from it.

Environment switches:
- DECODEKIT_DISABLE_PLUGINS: "1" (or "all") loads no third-party plugin; a comma-separated list of
  entry-point names blocks just those.
- DECODEKIT_LOAD_PLUGINS: a comma-separated list of entry-point names: load only these.
The built-in strategies always load: they register through the same hook as plugins.
"""

from __future__ import annotations

import difflib
import functools
import os
import warnings
from importlib.metadata import entry_points

import pluggy

from decodekit.core.registry import Registry
from decodekit.errors import PluginError
from decodekit.plugins import hookspecs

ENTRY_POINT_GROUP = "decodekit"
BUILTIN_PLUGIN = "decodekit.strategies"
PREFIX = "decodekit_"


def _names(variable: str) -> set[str] | None:
    value = os.environ.get(variable, "").strip()
    if not value:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _wanted(name: str) -> bool:
    disabled = _names("DECODEKIT_DISABLE_PLUGINS")
    if disabled is not None and (disabled & {"1", "all", "true", "yes"} or name in disabled):
        return False
    selected = _names("DECODEKIT_LOAD_PLUGINS")
    return selected is None or name in selected


def hook_names() -> list[str]:
    """The names of every hook decodekit specifies (the functions in decodekit.plugins.hookspecs)."""
    return sorted(name for name in dir(hookspecs) if name.startswith(PREFIX) and callable(getattr(hookspecs, name)))


def _unknown_hook_error(pm: pluggy.PluginManager, exc: pluggy.PluginValidationError) -> PluginError:
    name = pm.get_name(exc.plugin) or repr(exc.plugin)
    bad = [attr for attr in dir(exc.plugin) if attr.startswith(PREFIX) and attr not in hook_names()
           and pm.parse_hookimpl_opts(exc.plugin, attr) is not None]
    hints = []
    for attr in bad:
        close = difflib.get_close_matches(attr, hook_names(), n=1)
        hints.append(f"{attr!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    what = ", ".join(hints) if hints else str(exc)
    return PluginError(f"decodekit plugin {name!r} implements unknown hook {what}; "
                       f"the hooks are: {', '.join(hook_names())}")


def make_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A new plugin manager with decodekit's hookspecs, the built-ins and the installed plugins.

    Installed plugins are the entry points of the group `decodekit`, filtered by the environment
    switches above. A plugin that fails to import is skipped with a warning naming it. A plugin with
    a hook implementation that matches no hookspec (a misspelt name) or has a parameter the hookspec
    lacks raises PluginError naming the plugin and the hook: that is a bug to fix, not to skip.
    """
    from decodekit import strategies

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(strategies, name=BUILTIN_PLUGIN)
    if load_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if not _wanted(ep.name) or pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take decodekit down
                warnings.warn(f"decodekit plugin {ep.name!r} ({ep.value}) failed to import and is skipped: {exc!r}",
                              stacklevel=2)
                continue
            try:
                pm.register(plugin, name=ep.name)
            except pluggy.PluginValidationError as exc:  # a hookimpl whose parameters the hookspec lacks
                raise PluginError(f"decodekit plugin {ep.name!r} ({ep.value}): {exc}") from exc
    try:
        pm.check_pending()  # a misspelt hook implementation fails here, loudly
    except pluggy.PluginValidationError as exc:
        raise _unknown_hook_error(pm, exc) from exc
    return pm


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every plugin's decodekit_register_strategies, one plugin at a time."""
    registry = Registry()
    for impl in pm.hook.decodekit_register_strategies.get_hookimpls():
        registry.current_plugin = impl.plugin_name
        try:
            impl.function(register=registry.register)
        except Exception as exc:
            if impl.plugin_name == BUILTIN_PLUGIN:
                raise
            registry.drop_plugin(impl.plugin_name)
            registry.failures[impl.plugin_name] = repr(exc)
            warnings.warn(f"decodekit plugin {impl.plugin_name!r} raised while registering strategies and is "
                          f"skipped: {exc!r}", stacklevel=2)
    registry.current_plugin = None
    return registry


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The registry of this process (built on first use; `get_registry.cache_clear()` rebuilds it)."""
    return build_registry(make_plugin_manager())
