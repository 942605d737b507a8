"""Finding, selecting and isolating plugins: env switches, misspelt hooks, raising and duplicate plugins."""

from __future__ import annotations

import warnings

import pytest
import torch

import decodekit
from decodekit.cli import main
from decodekit.errors import PluginError
from decodekit.plugins.manager import BUILTIN_PLUGIN, build_registry, make_plugin_manager
from decodekit.testing import tiny_model


@pytest.fixture(autouse=True)
def no_switches(monkeypatch):
    monkeypatch.delenv("DECODEKIT_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("DECODEKIT_LOAD_PLUGINS", raising=False)


BUILTINS = ["greedy", "jacobi", "lookahead", "speculative"]


def loaded(pm) -> set[str]:
    return {name for name, _ in pm.list_name_plugin()}


def test_installed_plugins_are_found_through_the_entry_point_group(install_plugin, strategy_source):
    install_plugin("alpha", strategy_source("alpha-strategy"))
    pm = make_plugin_manager()
    assert {"alpha", BUILTIN_PLUGIN} <= loaded(pm)
    assert build_registry(pm).get("alpha-strategy").plugin == "alpha"


@pytest.mark.parametrize("value", ["1", "all"])
def test_disable_plugins_blocks_every_plugin_but_the_builtins(install_plugin, strategy_source, monkeypatch, value):
    install_plugin("alpha", strategy_source("alpha-strategy"))
    monkeypatch.setenv("DECODEKIT_DISABLE_PLUGINS", value)
    pm = make_plugin_manager()
    assert loaded(pm) == {BUILTIN_PLUGIN}
    assert build_registry(pm).names() == BUILTINS


def test_disable_plugins_with_names_blocks_just_those(install_plugin, strategy_source, monkeypatch):
    install_plugin("alpha", strategy_source("alpha-strategy"))
    install_plugin("beta", strategy_source("beta-strategy"))
    monkeypatch.setenv("DECODEKIT_DISABLE_PLUGINS", "alpha, gamma")
    names = build_registry(make_plugin_manager()).names()
    assert "beta-strategy" in names and "alpha-strategy" not in names and "greedy" in names


def test_load_plugins_selects_only_those(install_plugin, strategy_source, monkeypatch):
    install_plugin("alpha", strategy_source("alpha-strategy"))
    install_plugin("beta", strategy_source("beta-strategy"))
    monkeypatch.setenv("DECODEKIT_LOAD_PLUGINS", "beta")
    pm = make_plugin_manager()
    assert loaded(pm) == {BUILTIN_PLUGIN, "beta"}  # installed plugins outside the list stay out
    assert build_registry(pm).names() == sorted(["beta-strategy", *BUILTINS])


def test_disable_wins_over_load(install_plugin, strategy_source, monkeypatch):
    install_plugin("alpha", strategy_source("alpha-strategy"))
    monkeypatch.setenv("DECODEKIT_LOAD_PLUGINS", "alpha")
    monkeypatch.setenv("DECODEKIT_DISABLE_PLUGINS", "alpha")
    assert loaded(make_plugin_manager()) == {BUILTIN_PLUGIN}


def test_switches_apply_to_the_process_registry_and_the_cli(install_plugin, strategy_source, monkeypatch,
                                                            fresh_registry, capsys):
    install_plugin("alpha", strategy_source("alpha-strategy"))
    assert "alpha-strategy" in decodekit.list_strategies()
    monkeypatch.setenv("DECODEKIT_DISABLE_PLUGINS", "alpha")
    fresh_registry.cache_clear()
    assert "alpha-strategy" not in decodekit.list_strategies()
    assert main(["strategies"]) == 0
    assert "alpha-strategy" not in capsys.readouterr().out


MISSPELT = '''
import decodekit

@decodekit.hookimpl
def decodekit_register_strategy(register):  # missing the final "s"
    pass
'''

WRONG_ARGUMENT = '''
import decodekit

@decodekit.hookimpl
def decodekit_register_strategies(registry):  # the hook passes `register`
    pass
'''


def test_a_misspelt_hook_implementation_fails_loudly(install_plugin):
    install_plugin("typo", MISSPELT)
    with pytest.raises(PluginError) as info:
        make_plugin_manager()
    message = str(info.value)
    assert "'typo'" in message and "'decodekit_register_strategy'" in message
    assert "did you mean 'decodekit_register_strategies'" in message


def test_a_hook_implementation_with_an_unknown_argument_fails_loudly(install_plugin):
    install_plugin("badarg", WRONG_ARGUMENT)
    with pytest.raises(PluginError, match=r"(?s)'badarg'.*'registry'.*hookspec"):
        make_plugin_manager()


RAISES = '''
import decodekit

class Half(decodekit.Decoder):
    name = "half-registered"
    capabilities = decodekit.Capabilities(exact=True)
    def step(self, state):
        raise AssertionError("never built")

@decodekit.hookimpl
def decodekit_register_strategies(register):
    register(Half)
    raise RuntimeError("boom in plugin")
'''


def test_a_plugin_that_raises_while_registering_is_named_and_skipped(install_plugin, strategy_source,
                                                                     fresh_registry, capsys):
    install_plugin("exploding", RAISES)
    install_plugin("alpha", strategy_source("alpha-strategy"))
    with pytest.warns(UserWarning, match=r"plugin 'exploding' raised while registering.*boom in plugin"):
        registry = fresh_registry()
    assert "half-registered" not in registry.names()  # none of its strategies, even those registered first
    assert "alpha-strategy" in registry.names() and "greedy" in registry.names()
    assert "boom in plugin" in registry.failures["exploding"]
    # decodekit keeps working
    model = tiny_model("qwen2")
    out = decodekit.generate(model, torch.tensor([[4, 5, 6]]), "alpha-strategy", max_new_tokens=4, eos_token_id=[])
    assert out.sequences.shape == (1, 7)
    assert main(["strategies"]) == 0
    assert "plugin 'exploding' failed to register" in capsys.readouterr().out


def test_a_plugin_that_fails_to_import_is_named_and_skipped(install_plugin, strategy_source):
    install_plugin("broken-import", "raise ImportError('missing dependency xyz')\n")
    install_plugin("alpha", strategy_source("alpha-strategy"))
    with pytest.warns(UserWarning, match=r"plugin 'broken-import'.*failed to import.*missing dependency xyz"):
        pm = make_plugin_manager()
    assert "alpha" in loaded(pm) and "broken-import" not in loaded(pm)


def test_a_duplicate_of_a_builtin_name_is_refused(install_plugin, strategy_source):
    install_plugin("impostor", strategy_source("greedy"))
    with pytest.warns(UserWarning, match=r"'impostor'.*'greedy'.*already registered by plugin 'decodekit.strategies'"):
        registry = build_registry(make_plugin_manager())
    assert registry.get("greedy").plugin == BUILTIN_PLUGIN
    assert "impostor" in registry.failures


def test_a_duplicate_between_plugins_is_refused(install_plugin, strategy_source):
    install_plugin("first", strategy_source("shared-name"))
    install_plugin("second", strategy_source("shared-name"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = build_registry(make_plugin_manager())
    assert registry.get("shared-name").plugin == "first"
    assert [str(w.message) for w in caught if "already registered by plugin 'first'" in str(w.message)]
    assert "second" in registry.failures


def test_register_refuses_what_is_not_a_strategy():
    from decodekit.core.registry import Registry

    registry = Registry()
    with pytest.raises(PluginError, match="not a decodekit.Decoder subclass"):
        registry.register(int)

    class Nameless(decodekit.Decoder):
        capabilities = decodekit.Capabilities(exact=True)
        def step(self, state):
            return []

    with pytest.raises(PluginError, match=r"Nameless.name must be a non-empty string"):
        registry.register(Nameless)
