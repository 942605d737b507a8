"""Jacobi decoding: parameters, exactness against greedy on fixed cases, sampling, statistics."""

from __future__ import annotations

import contextlib

import pytest
import torch

import decodekit
from decodekit.errors import InputError, StrategyParameterError
from decodekit.testing import tiny_model

PROMPT = torch.tensor([[5, 6, 7, 8]])


@contextlib.contextmanager
def count_forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def greedy(model, ids=PROMPT, **kw):
    return decodekit.generate(model, ids, "greedy", **kw).sequences


def test_registered_with_its_capabilities():
    assert "jacobi" in decodekit.list_strategies()
    from decodekit.strategies.jacobi import Jacobi

    assert Jacobi.capabilities.exact and Jacobi.capabilities.supports_sampling
    assert not Jacobi.capabilities.needs_draft_model


@pytest.mark.parametrize("kw, message", [
    ({"block_size": 0}, "jacobi: block_size must be >= 1, got 0"),
    ({"max_iterations": 0}, "jacobi: max_iterations must be >= 1, got 0"),
    ({"block_size": 2.5}, "jacobi: block_size must be an integer, got 2.5"),
    ({"blocksize": 4}, "unknown parameter 'blocksize' for 'jacobi'; did you mean 'block_size'?"),
])
def test_bad_parameters_are_refused_before_any_forward(kw, message):
    model = tiny_model("llama")
    with count_forwards(model) as calls, pytest.raises(StrategyParameterError) as info:
        decodekit.generate(model, PROMPT, "jacobi", max_new_tokens=4, **kw)
    assert message in str(info.value)
    assert not calls


def test_a_draft_model_is_refused():
    model = tiny_model("llama")
    with pytest.raises(InputError, match="does not use a draft model"):
        decodekit.generate(model, PROMPT, "jacobi", draft_model=model)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("block_size, max_iterations", [(1, 1), (2, 5), (4, 1), (8, 8), (16, 3)])
def test_equals_greedy(arch, block_size, max_iterations):
    model = tiny_model(arch, seed=1)
    out = decodekit.generate(model, PROMPT, "jacobi", max_new_tokens=30, eos_token_id=[],
                             block_size=block_size, max_iterations=max_iterations)
    assert torch.equal(out.sequences, greedy(model, max_new_tokens=30, eos_token_id=[]))


def test_block_size_one_is_greedy_step_for_step():
    model = tiny_model("llama", seed=1)
    out = decodekit.generate(model, PROMPT, "jacobi", max_new_tokens=12, eos_token_id=[], block_size=1)
    assert out.stats.steps == 12  # the prefill and 11 one-token passes
    assert dict(out.stats.accepted_histogram) == {1: 12}


def test_repetitive_output_converges_several_tokens_per_pass():
    model = tiny_model("gpt2", seed=1)  # its greedy output repeats a token, which Jacobi guesses for free
    out = decodekit.generate(model, torch.tensor([[5, 6, 7]]), "jacobi", max_new_tokens=30, eos_token_id=[],
                             block_size=6, max_iterations=1)
    assert torch.equal(out.sequences, greedy(model, torch.tensor([[5, 6, 7]]), max_new_tokens=30, eos_token_id=[]))
    assert max(out.stats.accepted_histogram) > 1
    assert out.stats.steps < 30


def test_stops_at_eos_and_max_new_tokens():
    model = tiny_model("llama", seed=1)
    full = greedy(model, max_new_tokens=20, eos_token_id=[])[0, 4:].tolist()
    eos = full[7]
    out = decodekit.generate(model, PROMPT, "jacobi", max_new_tokens=20, eos_token_id=eos, block_size=8)
    assert out.sequences[0, 4:].tolist() == full[: full.index(eos) + 1]
    for n in (1, 2, 3, 9):
        out = decodekit.generate(model, PROMPT, "jacobi", max_new_tokens=n, eos_token_id=[], block_size=8)
        assert out.sequences[0, 4:].tolist() == full[:n]


def test_window_never_runs_past_max_new_tokens():
    model = tiny_model("llama", seed=1)
    with count_forwards(model):
        out = decodekit.generate(model, PROMPT, "jacobi", max_new_tokens=3, eos_token_id=[], block_size=16)
    # after the prefill's token at most 2 more may be committed: each pass feeds at most 2 tokens
    assert out.stats.tokens_computed <= 2 * (out.stats.steps - 1)


def test_sampling_same_seed_same_output_and_top_k_one_is_greedy():
    model = tiny_model("qwen2", seed=3)

    def sample(seed, **kw):
        generator = torch.Generator().manual_seed(seed)
        return decodekit.generate(model, PROMPT, "jacobi", max_new_tokens=24, eos_token_id=[], do_sample=True,
                                  generator=generator, block_size=5, **kw).sequences

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))
    assert torch.equal(sample(7, top_k=1), greedy(model, max_new_tokens=24, eos_token_id=[]))
