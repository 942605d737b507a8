"""One test per hook in decodekit.plugins.hookspecs, named test_hook_<hook name>
(test_hook_docs.py checks that every hook has one)."""

from __future__ import annotations

import torch

import decodekit
from decodekit.plugins.manager import BUILTIN_PLUGIN, build_registry, make_plugin_manager
from decodekit.testing import tiny_model

RECORDING_PLUGIN = '''
import decodekit

CALLS = []

class Recorded(decodekit.Decoder):
    name = "recorded"
    capabilities = decodekit.Capabilities(exact=True)

    def step(self, state):
        logits = state.forward([state.pending], logits_to_keep=1)
        return [int(state.choose(logits[-1]))]

@decodekit.hookimpl
def decodekit_register_strategies(register):
    CALLS.append(register)
    register(Recorded)
    return "ignored"
'''


def test_hook_decodekit_register_strategies(install_plugin, fresh_registry, monkeypatch):
    monkeypatch.setenv("DECODEKIT_LOAD_PLUGINS", "recorder")
    monkeypatch.delenv("DECODEKIT_DISABLE_PLUGINS", raising=False)
    module = install_plugin("recorder", RECORDING_PLUGIN)
    pm = make_plugin_manager()
    assert pm.has_plugin("recorder") and pm.has_plugin(BUILTIN_PLUGIN)
    order = [impl.plugin_name for impl in pm.hook.decodekit_register_strategies.get_hookimpls()]
    assert order == [BUILTIN_PLUGIN, "recorder"]  # built-ins first, then installed plugins

    registry = build_registry(pm)
    calls = __import__(module).CALLS
    assert len(calls) == 1 and callable(calls[0])  # called once, with the register callback
    assert registry.get("recorded").plugin == "recorder"
    assert registry.get("greedy").plugin == BUILTIN_PLUGIN

    # the process registry calls it once, and what it registered decodes like any built-in
    assert "recorded" in decodekit.list_strategies() and "recorded" in decodekit.list_strategies()
    assert len(calls) == 2  # once for build_registry above, once for the cached process registry
    model = tiny_model("llama")
    ids = torch.tensor([[5, 6, 7]])
    out = decodekit.generate(model, ids, "recorded", max_new_tokens=5, eos_token_id=[])
    assert torch.equal(out.sequences, decodekit.generate(model, ids, "greedy", max_new_tokens=5, eos_token_id=[]).sequences)
