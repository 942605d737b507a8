"""Generation settings are resolved exactly as model.generate resolves them, for every exact strategy.

eos, pad, max_new_tokens / max_length and min_new_tokens come from the call, then `generation_config=`,
then `model.generation_config`, then HF's defaults; `eos_token_id=None` in the model's generation config
(or in the call) means "no eos" even when `model.config.eos_token_id` is set. Each case compares every
exact strategy with model.generate(do_sample=False) under the same settings.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

import decodekit
from decodekit.strategies.speculative import truncated_draft
from decodekit.testing import tiny_model

# (arch, seed, prompt): tiny models whose greedy continuation holds token 2 (the eos) a few tokens in
MODELS = [("llama", 3, [5, 6, 7]), ("qwen2", 0, [5, 6, 7]), ("gpt2", 1, [9, 10, 11, 3])]
STRATEGIES = [("greedy", {}), ("jacobi", {"block_size": 5}), ("lookahead", {"W": 3, "N": 3, "G": 4}),
              ("speculative", {"gamma": 4}), ("prompt-lookup", {"max_ngram": 2})]


def fresh(arch, seed):
    """A private copy of a tiny model (the cached ones must not be modified)."""
    return copy.deepcopy(tiny_model(arch, seed=seed, init=1.0, vocab_size=12))


def assert_all_match(model, ids, **kwargs):
    with torch.inference_mode():
        expected = model.generate(ids, do_sample=False, attention_mask=torch.ones_like(ids), **kwargs)
    for name, params in STRATEGIES:
        extra = {"draft_model": truncated_draft(model, layers=1)} if name == "speculative" else {}
        out = decodekit.generate(model, ids, name, **kwargs, **params, **extra)
        assert torch.equal(out.sequences, expected), (name, kwargs, out.sequences.tolist(), expected.tolist())
    return expected


@pytest.mark.parametrize("arch, seed, prompt", MODELS)
def test_eos_off_in_the_models_generation_config_means_no_eos(arch, seed, prompt):
    model = fresh(arch, seed)
    ids = torch.tensor([prompt])
    model.generation_config.eos_token_id = None  # the user switched stopping off; model.config still says 2
    assert model.config.eos_token_id == 2
    out = assert_all_match(model, ids, max_new_tokens=20)
    assert out.shape[1] == len(prompt) + 20 and 2 in out[0, len(prompt):].tolist()  # ran through its eos


@pytest.mark.parametrize("arch, seed, prompt", MODELS)
def test_eos_from_the_generation_config_and_from_the_call(arch, seed, prompt):
    model = fresh(arch, seed)
    ids = torch.tensor([prompt])
    stopped = assert_all_match(model, ids, max_new_tokens=20)  # the generation config's eos (2)
    assert stopped[0, -1] == 2 and stopped.shape[1] < len(prompt) + 20
    assert_all_match(model, ids, max_new_tokens=20, eos_token_id=None)  # None in the call: no eos
    assert_all_match(model, ids, max_new_tokens=20, eos_token_id=[7, 11, 2])
    assert_all_match(model, ids, max_new_tokens=20, eos_token_id=torch.tensor([7, 11]))
    assert_all_match(model, ids, max_new_tokens=20, eos_token_id=torch.tensor(2))
    assert_all_match(model, ids, max_new_tokens=20, min_new_tokens=12)  # eos suppressed for 12 tokens
    assert_all_match(model, ids, max_new_tokens=20, min_length=len(prompt) + 9, eos_token_id=[2, 10])


@pytest.mark.parametrize("arch, seed, prompt", MODELS[:2])
def test_lengths(arch, seed, prompt):
    model = fresh(arch, seed)
    model.generation_config.eos_token_id = None
    ids = torch.tensor([prompt])
    with pytest.warns(UserWarning, match=r"neither max_new_tokens nor max_length is set: model.generate's default "
                                         r"max_length applies \(\d+, 20 new tokens\)"):
        assert assert_all_match(model, ids).shape[1] == len(prompt) + 20  # HF's default: max_length 20 more tokens
    assert assert_all_match(model, ids, max_length=11).shape[1] == 11
    assert assert_all_match(model, ids, max_length=11, max_new_tokens=None).shape[1] == 11
    model.generation_config.max_length = 9
    assert assert_all_match(model, ids).shape[1] == 9
    model.generation_config.max_new_tokens = 4
    assert assert_all_match(model, ids).shape[1] == len(prompt) + 4
    assert assert_all_match(model, ids, max_new_tokens=6).shape[1] == len(prompt) + 6


def test_generation_config_argument_under_the_calls_keywords():
    model = fresh("llama", 3)
    ids = torch.tensor([[5, 6, 7]])
    config = GenerationConfig(max_new_tokens=15, eos_token_id=[10], min_new_tokens=2)
    assert_all_match(model, ids, generation_config=config)
    assert_all_match(model, ids, generation_config=config, eos_token_id=2, max_new_tokens=9)
    assert config.max_new_tokens == 15 and config.eos_token_id == [10]  # the caller's object is left as it was


def test_batch_padding_uses_the_first_eos_when_no_pad_id():
    model = fresh("llama", 3)
    model.generation_config.pad_token_id = None
    ids = torch.tensor([[5, 6, 7], [9, 10, 11]])
    out = assert_all_match(model, ids, max_new_tokens=16, eos_token_id=[2, 10])
    assert (out == 2).any()  # a finished row padded with eos_token_id[0], as HF pads it


class StopAfterPair(StoppingCriteria):
    """A user's criterion: stop once the sequence ends with `pair` (a function of input_ids alone)."""

    def __init__(self, pair):
        self.pair = list(pair)

    def __call__(self, input_ids, scores, **kwargs):
        return torch.tensor([row[-2:].tolist() == self.pair for row in input_ids])


@pytest.mark.parametrize("arch, seed, prompt", MODELS)
def test_a_users_stopping_criteria_cut_steps_where_greedy_stops(arch, seed, prompt):
    model = fresh(arch, seed)
    model.generation_config.eos_token_id = None
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        free = model.generate(ids, do_sample=False, max_new_tokens=20)[0, len(prompt):].tolist()
    for at in (3, 9):
        criteria = StoppingCriteriaList([StopAfterPair(free[at - 1: at + 1])])
        out = assert_all_match(model, ids, max_new_tokens=20, stopping_criteria=criteria)
        assert out.shape[1] <= len(prompt) + at + 1


def test_rows_stopped_by_a_criterion_go_on_without_an_eos_as_hf_does():
    # no eos criterion: model.generate pads nothing, so a row that has stopped goes on decoding
    model = fresh("llama", 3)
    model.generation_config.eos_token_id = None
    ids = torch.tensor([[5, 6, 7], [9, 10, 11]])
    with torch.inference_mode():
        free = model.generate(ids, do_sample=False, max_new_tokens=20)[0, 3:].tolist()
    criteria = StoppingCriteriaList([StopAfterPair(free[3:5])])
    out = assert_all_match(model, ids, max_new_tokens=20, stopping_criteria=criteria)
    assert out[0, 3:].tolist() == free  # row 0 met the criterion early and went on with real tokens
