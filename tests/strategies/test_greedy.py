"""Greedy through decodekit's loop equals model.generate(do_sample=False), token for token."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decodekit
from decodekit.testing import tiny_model
from tests.helpers import hf_greedy

ARCHS = [("llama", 0), ("qwen2", 1), ("mistral", 2), ("gpt2", 3)]


@pytest.mark.parametrize("arch, seed", ARCHS)
@pytest.mark.parametrize("with_eos", [False, True])
def test_greedy_equals_hf_generate(arch, seed, with_eos):
    model = tiny_model(arch, seed=seed)
    ids = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 9, 10]])
    free = hf_greedy(model, ids, 40, eos=[])
    eos = [int(free[0, ids.shape[1] + 17])] if with_eos else []  # a token the model emits mid-output
    expected = hf_greedy(model, ids, 40, eos=eos)
    out = decodekit.generate(model, ids, "greedy", max_new_tokens=40, eos_token_id=eos)
    assert out.sequences.tolist() == expected.tolist()
    if with_eos:
        assert out.sequences.shape[1] < ids.shape[1] + 40 and out.sequences[0, -1].item() == eos[0]
    assert out.stats.new_tokens == out.sequences.shape[1] - ids.shape[1]
    assert out.stats.steps == out.stats.new_tokens and out.stats.mean_accepted == 1.0
    assert dict(out.stats.accepted_histogram) == {1: out.stats.new_tokens}


@settings(max_examples=25)
@given(arch=st.sampled_from(ARCHS), prompt=st.lists(st.integers(3, 95), min_size=1, max_size=20),
       max_new=st.integers(1, 30), eos=st.sampled_from([[], [2], [2, 7, 11]]))
def test_greedy_equals_hf_generate_property(arch, prompt, max_new, eos):
    model = tiny_model(arch[0], seed=arch[1])
    ids = torch.tensor([prompt])
    expected = hf_greedy(model, ids, max_new, eos=eos)
    out = decodekit.generate(model, ids, "greedy", max_new_tokens=max_new, eos_token_id=eos)
    assert out.sequences.tolist() == expected.tolist()


def test_batch_rows_are_decoded_and_padded_like_generate():
    model = tiny_model("llama")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    out = decodekit.generate(model, ids, max_new_tokens=12, eos_token_id=[])
    for row in range(2):
        single = decodekit.generate(model, ids[row:row + 1], max_new_tokens=12, eos_token_id=[])
        assert out.sequences[row].tolist() == single.sequences[0].tolist()
    assert out.stats.new_tokens == 24


def test_two_calls_share_no_state():
    model = tiny_model("qwen2", seed=1)
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    first = decodekit.generate(model, ids, max_new_tokens=20)
    second = decodekit.generate(model, ids, max_new_tokens=20)
    assert torch.equal(first.sequences, second.sequences)


def test_on_step_streams_every_committed_token():
    model = tiny_model("llama")
    ids = torch.tensor([[5, 6, 7]])
    seen: list[int] = []
    out = decodekit.generate(model, ids, max_new_tokens=15, eos_token_id=[], on_step=seen.extend)
    assert seen == out.sequences[0, 3:].tolist()
