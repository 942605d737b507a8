"""decodekit.hf_generate: decodekit's strategies inside model.generate(custom_generate=...)."""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

import decodekit
from decodekit.errors import InputError, StrategyParameterError
from decodekit.testing import tiny_model

IDS = torch.tensor([[5, 6, 7]])
STRATEGIES = [("greedy", {}), ("jacobi", {"block_size": 5}), ("lookahead", {"W": 2, "N": 3, "G": 4}),
              ("speculative", {"gamma": 3}), ("prompt-lookup", {"max_ngram": 2})]


def model():
    return tiny_model("llama", seed=3, init=1.0, vocab_size=12)


class StopAfter(StoppingCriteria):
    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


@pytest.mark.parametrize("kwargs", [
    dict(max_new_tokens=20),
    dict(max_new_tokens=20, eos_token_id=None, repetition_penalty=1.3, no_repeat_ngram_size=3),
    dict(max_new_tokens=20, min_new_tokens=9, bad_words_ids=[[10, 4]], suppress_tokens=[11]),
    dict(max_new_tokens=20, eos_token_id=None, stopping_criteria=StoppingCriteriaList([StopAfter(8)])),
])
def test_equals_model_generate_for_every_exact_strategy(kwargs):
    m = model()
    expected = m.generate(IDS, do_sample=False, **kwargs)
    for name, params in STRATEGIES:
        extra = {"draft_model": m} if name == "speculative" else {}
        out = m.generate(IDS, do_sample=False, custom_generate=decodekit.hf_generate, strategy=name, **params,
                         **extra, **kwargs)
        assert torch.equal(out, expected), (name, out.tolist(), expected.tolist())


def test_return_dict_and_sampling_from_a_generator():
    m = model()
    out = m.generate(IDS, custom_generate=decodekit.hf_generate, strategy="lookahead", max_new_tokens=6,
                     return_dict_in_generate=True)
    assert type(out).__name__ == "GenerateDecoderOnlyOutput" and out.sequences.shape == (1, 9)
    kw = dict(do_sample=True, temperature=0.8, top_k=6, top_p=0.9, repetition_penalty=1.2, max_new_tokens=12)
    via_hf = m.generate(IDS, custom_generate=decodekit.hf_generate, strategy="jacobi",
                        generator=torch.Generator().manual_seed(7), **kw)
    direct = decodekit.generate(m, IDS, "jacobi", generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(via_hf, direct.sequences)  # the same resolved settings, the same draws


def test_the_signature_lists_every_strategys_parameters():
    params = inspect.signature(decodekit.hf_generate).parameters
    for name in ("strategy", "draft_model", "generator", "W", "N", "G", "block_size", "gamma", "max_ngram"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(strategy="jacobi", W=2), StrategyParameterError, r"unknown parameter 'W' for 'jacobi'"),
    (dict(strategy="lookahead", W=0), StrategyParameterError, r"lookahead: W must be >= 1, got 0"),
    (dict(strategy="greedy", num_beams=2), InputError, r"generation mode 'beam_search' .* is not supported"),
    (dict(strategy="greedy", output_scores=True, return_dict_in_generate=True), InputError,
     r"output_scores=True is not supported"),
])
def test_bad_calls_are_refused_before_any_forward(kwargs, error, message):
    m = model()
    calls = []
    handle = m.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(error, match=message):
            m.generate(IDS, custom_generate=decodekit.hf_generate, max_new_tokens=4, **kwargs)
    finally:
        handle.remove()
    assert not calls
