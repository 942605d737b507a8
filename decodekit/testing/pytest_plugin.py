"""decodekit's pytest plugin (entry point `pytest11`): fixtures for testing strategies.

Installed with decodekit, active in every pytest run of an environment that has decodekit. It
registers the Hypothesis profiles `dev` and `ci` (deadline=None, print_blob=True; select one with
`--hypothesis-profile=ci`) and provides fixtures so that a plugin's own test suite proves its
strategy exact in one line:

    def test_exact(assert_matches_greedy):
        assert_matches_greedy("prompt-lookup", max_ngram=2)

Fixtures:
- assert_matches_greedy: decodekit.testing.assert_matches_greedy (the property "output equals greedy"
  over tiny models of several architectures, prompts and eos choices).
- decodekit_tiny_model: the factory of tiny random models, decodekit_tiny_model("qwen2", seed=3).
- decodekit_register: register Decoder subclasses for the duration of one test
  (decodekit_register(MyStrategy)); they are removed afterwards.
- decodekit_default_model: (model, tokenizer) of the default model in float32, loaded once per session.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

settings.register_profile("dev", max_examples=30, deadline=None, print_blob=True)
settings.register_profile("ci", max_examples=100, deadline=None, print_blob=True, derandomize=True)


@pytest.fixture
def assert_matches_greedy():
    """assert_matches_greedy(strategy, **params): fail with the first differing position if not exact."""
    from decodekit.testing.exactness import assert_matches_greedy

    return assert_matches_greedy


@pytest.fixture
def decodekit_tiny_model():
    """A factory for tiny random causal LMs: decodekit_tiny_model("qwen2", seed=3)."""
    from decodekit.testing.models import tiny_model

    return tiny_model


@pytest.fixture
def decodekit_register():
    """register(cls, plugin="test"): add a Decoder subclass to the process's registry for this test only."""
    from decodekit.plugins.manager import get_registry

    registry = get_registry()
    added: list[str] = []

    def register(cls: type, plugin: str = "test") -> type:
        registry.current_plugin = plugin
        try:
            registry.register(cls)
        finally:
            registry.current_plugin = None
        added.append(cls.name)
        return cls

    yield register
    for name in added:
        registry.strategies.pop(name, None)


@pytest.fixture(scope="session")
def decodekit_default_model():
    """(model, tokenizer): the default model (SmolLM2-135M-Instruct) in float32, loaded once per session."""
    from decodekit.models import load_default

    return load_default("float32")
