"""decodekit's pytest plugin (entry point `pytest11`): fixtures for testing strategies.

Registers the Hypothesis profiles `dev` and `ci` (deadline=None, print_blob=True) and fixtures that
a plugin's own test suite can use directly.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

settings.register_profile("dev", max_examples=30, deadline=None, print_blob=True)
settings.register_profile("ci", max_examples=100, deadline=None, print_blob=True, derandomize=True)


@pytest.fixture
def decodekit_tiny_model():
    """A factory for tiny random causal LMs: decodekit_tiny_model("qwen2", seed=3)."""
    from decodekit.testing.models import tiny_model

    return tiny_model
