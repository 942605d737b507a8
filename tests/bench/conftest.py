"""Fixtures for the bench tests: a tiny model, a toy tokenizer and a test-only strategy with a parameter."""

from __future__ import annotations

import attrs
import pytest
import torch

from decodekit.core.decoder import Decoder, DecodeState
from decodekit.core.params import param
from decodekit.core.types import Capabilities
from decodekit.plugins.manager import get_registry


@attrs.frozen(kw_only=True)
class _ChunkParams:
    k: int = param(2, ge=1, le=8, help="tokens per step (test strategy)")


class ChunkGreedy(Decoder):
    """Greedy with a parameter: exact, registered only for these tests (sweeps and spec parsing)."""

    name = "bench-test-chunk"
    description = "test-only greedy with a parameter"
    capabilities = Capabilities(exact=True)
    Params = _ChunkParams

    def step(self, state: DecodeState) -> list[int]:
        logits = state.forward([state.pending], layout=None, logits_to_keep=1)  # (1, V)
        return [int(state.choose(logits[-1]))]


@pytest.fixture
def chunk_strategy():
    """Registers ChunkGreedy in this process's registry for the test, then removes it."""
    registry = get_registry()
    registry.current_plugin = "tests.bench"
    registry.register(ChunkGreedy)
    registry.current_plugin = None
    try:
        yield ChunkGreedy.name
    finally:
        registry.strategies.pop(ChunkGreedy.name, None)


@pytest.fixture(autouse=True)
def synthetic_costs(monkeypatch, tmp_path_factory):
    """The bench records the target's forward cost curve: here a synthetic one, kept in a temporary folder, so
    that no test measures for seconds or writes into the user's cache. Returns the models it measured."""
    import weakref

    from decodekit.core import costmodel

    measured = []

    def measure(model, **kwargs):
        measured.append(model)
        return costmodel.CostModel.from_points({1: 0.01, 4: 0.012, 16: 0.02, 64: 0.05}, reference_cached=256)

    monkeypatch.setattr(costmodel, "measure", measure)
    folder = tmp_path_factory.mktemp("costs")
    monkeypatch.setattr(costmodel, "costs_dir", lambda: folder)
    monkeypatch.setattr(costmodel, "_MEMO", weakref.WeakKeyDictionary())
    monkeypatch.setattr("decodekit.testing.models.use_cost_model", lambda model, cost: None)  # measure them here
    return measured


@pytest.fixture
def tiny():
    from decodekit.testing.models import tiny_model

    # peaky weights: repetitive outputs, so prompt lookup and n-gram methods find matches
    return tiny_model("llama", seed=1, init=0.5)


class ToyTokenizer:
    """Just enough of a HF tokenizer for the bench: a chat template over characters, and decode."""

    def apply_chat_template(self, messages, add_generation_prompt=True, return_tensors="pt", return_dict=True):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + ("<assistant>" if add_generation_prompt else "")
        ids = [1] + [3 + (ord(c) % 90) for c in text[-60:]]
        return {"input_ids": torch.tensor([ids], dtype=torch.long)}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + (i % 26)) for i in ids)


@pytest.fixture
def toy_tokenizer():
    return ToyTokenizer()
