"""Property: Jacobi and greedy-mode speculative decoding equal decodekit greedy and HF generate token for token.

float64 tiny random models of several architectures; random prompts, block sizes, gamma, eos and
max_new_tokens. The draft is the target itself (everything accepted), a different random model
(next to nothing accepted), a model of another architecture, or the target's first layer (some
accepted).
"""

from __future__ import annotations

import torch
from hypothesis import given, note
from hypothesis import strategies as st

import decodekit
from decodekit.strategies.speculative import truncated_draft
from decodekit.testing import tiny_model

ARCHS = ("llama", "gpt2", "qwen2")
VOCAB = 96


@st.composite
def cases(draw):
    arch = draw(st.sampled_from(ARCHS))
    seed = draw(st.integers(0, 3))
    prompt = draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=10))
    max_new_tokens = draw(st.integers(1, 24))
    eos_index = draw(st.none() | st.integers(0, 23))  # eos: none, or a token greedy emits at that index
    return arch, seed, prompt, max_new_tokens, eos_index


def reference(model, prompt, max_new_tokens, eos_index):
    """(eos ids for decodekit, eos for HF, HF generate's output), all from the same eos choice."""
    ids = torch.tensor([prompt])
    # an explicit all-ones mask: otherwise HF infers one from pad_token_id and hides prompt tokens equal to it
    hf = dict(do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0)
    free = model.generate(ids, max_new_tokens=24, eos_token_id=[], **hf)
    new = free[0, len(prompt):].tolist()
    eos = [] if eos_index is None else [new[eos_index]]
    expected = model.generate(ids, max_new_tokens=max_new_tokens, eos_token_id=eos, **hf)
    note(f"greedy continuation {new}, eos {eos}")
    return ids, eos, expected


def check(model, ids, eos, expected, strategy, **kw):
    max_new_tokens = kw.pop("max_new_tokens")
    base = decodekit.generate(model, ids, "greedy", max_new_tokens=max_new_tokens, eos_token_id=eos)
    assert torch.equal(base.sequences, expected)
    out = decodekit.generate(model, ids, strategy, max_new_tokens=max_new_tokens, eos_token_id=eos, **kw)
    assert torch.equal(out.sequences, expected), (out.sequences, expected)
    assert out.stats.new_tokens == expected.shape[1] - ids.shape[1]


@given(case=cases(), block_size=st.integers(1, 12), max_iterations=st.integers(1, 12))
def test_jacobi_equals_greedy(case, block_size, max_iterations):
    arch, seed, prompt, max_new_tokens, eos_index = case
    model = tiny_model(arch, seed=seed)
    ids, eos, expected = reference(model, prompt, max_new_tokens, eos_index)
    check(model, ids, eos, expected, "jacobi", max_new_tokens=max_new_tokens, block_size=block_size,
          max_iterations=max_iterations)


@given(case=cases(), gamma=st.integers(1, 10), adaptive=st.booleans(),
       draft_kind=st.sampled_from(["itself", "other", "other-arch", "first-layer"]))
def test_speculative_equals_greedy(case, gamma, adaptive, draft_kind):
    arch, seed, prompt, max_new_tokens, eos_index = case
    model = tiny_model(arch, seed=seed, layers=2)
    draft = {
        "itself": lambda: model,
        "other": lambda: tiny_model(arch, seed=seed + 10),
        "other-arch": lambda: tiny_model("llama" if arch == "gpt2" else "gpt2", seed=seed + 10),
        "first-layer": lambda: truncated_draft(model, layers=1),
    }[draft_kind]()
    ids, eos, expected = reference(model, prompt, max_new_tokens, eos_index)
    check(model, ids, eos, expected, "speculative", max_new_tokens=max_new_tokens, draft_model=draft,
          gamma=gamma, adaptive=adaptive, max_gamma=max(gamma, 10))
