"""Install throwaway plugins for one test: a real module and a real dist-info (with entry_points.txt)
in a temporary folder put on sys.path, so importlib.metadata finds them exactly as it finds an
installed package. Nothing is installed into the environment, and nothing is mocked."""

from __future__ import annotations

import itertools
import sys
import textwrap

import pytest

from decodekit.plugins.manager import get_registry

_serial = itertools.count()


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """install_plugin(name, source) -> module name: an entry point `name` in group `decodekit`."""
    monkeypatch.syspath_prepend(str(tmp_path))
    modules: list[str] = []

    def install(entry_point: str, source: str) -> str:
        module = f"decodekit_test_plugin_{next(_serial)}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        dist = tmp_path / f"{module}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[decodekit]\n{entry_point} = {module}\n")
        modules.append(module)
        return module

    yield install
    for module in modules:
        sys.modules.pop(module, None)


@pytest.fixture
def fresh_registry():
    """Rebuild the process's registry before and after the test (the environment may have changed)."""
    get_registry.cache_clear()
    yield get_registry
    get_registry.cache_clear()


STRATEGY_SOURCE = '''
import decodekit

class Echo(decodekit.Decoder):
    name = "{name}"
    description = "greedy, from a test plugin"
    capabilities = decodekit.Capabilities(exact=True)

    def step(self, state):
        logits = state.forward([state.pending], logits_to_keep=1)
        return [int(state.choose(logits[-1]))]

@decodekit.hookimpl
def decodekit_register_strategies(register):
    register(Echo)
'''


@pytest.fixture
def strategy_source():
    """strategy_source(name): a plugin module registering a greedy strategy called `name`."""
    return lambda name: STRATEGY_SOURCE.replace("{name}", name)
