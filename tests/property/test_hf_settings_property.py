"""Property: under random generation settings every exact strategy equals model.generate(do_sample=False).

float64 tiny random models of three architectures; random generation configs: eos lists (ids the
greedy continuation holds, so they do stop it), eos off (in the call, or in the model's generation
config while model.config keeps its eos), min_new_tokens, repetition_penalty, no_repeat_ngram_size,
bad_words_ids, suppress_tokens, begin_suppress_tokens and sequence_bias. The logits processors these
set must be applied at every verified position with that position's own prefix, and every stop
(eos, max_new_tokens) must fall exactly where greedy decoding puts it, inside multi-token steps too.

Examples: three times the profile's max_examples (300 in the ci profile), each checking all five
exact strategies (greedy, jacobi, lookahead, speculative, prompt-lookup), through decodekit.generate
and through model.generate(custom_generate=decodekit.hf_generate).
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import decodekit
from decodekit.testing import tiny_model

ARCHS = ("llama", "gpt2", "qwen2")
VOCAB = 12  # small: greedy loops quickly, so drafts get accepted and processors bite


@st.composite
def generation_settings(draw, continuation: list[int]) -> dict:
    """Random HF generation keywords; eos ids are taken from the eos-free greedy continuation."""
    kw: dict = {"max_new_tokens": draw(st.integers(1, 16))}
    token = st.integers(3, VOCAB - 1)
    eos = draw(st.sampled_from(["model", "off", "from-output", "ids"]))
    if eos == "off":
        kw["eos_token_id"] = None
    elif eos == "from-output":  # ids the plain greedy continuation holds: with processors on, they may move
        picks = draw(st.lists(st.integers(0, len(continuation) - 1), min_size=1, max_size=3))
        kw["eos_token_id"] = sorted({continuation[i] for i in picks})
    elif eos == "ids":
        kw["eos_token_id"] = draw(st.lists(st.integers(2, VOCAB - 1), min_size=1, max_size=3, unique=True))
    if draw(st.booleans()):
        kw["min_new_tokens"] = draw(st.integers(0, 12))
    if draw(st.booleans()):
        kw["repetition_penalty"] = draw(st.sampled_from([0.8, 1.1, 1.3, 2.0]))
    if draw(st.booleans()):
        kw["no_repeat_ngram_size"] = draw(st.integers(2, 4))
    if draw(st.integers(0, 3)) == 0:
        kw["bad_words_ids"] = draw(st.lists(st.lists(token, min_size=1, max_size=2), min_size=1, max_size=3))
    if draw(st.integers(0, 3)) == 0:
        kw["suppress_tokens"] = draw(st.lists(token, min_size=1, max_size=2, unique=True))
    if draw(st.integers(0, 3)) == 0:
        kw["begin_suppress_tokens"] = draw(st.lists(st.integers(2, VOCAB - 1), min_size=1, max_size=2, unique=True))
    if draw(st.integers(0, 3)) == 0:
        kw["sequence_bias"] = {(draw(token),): draw(st.sampled_from([-3.0, 2.0])),
                               (draw(token), draw(token)): draw(st.sampled_from([-5.0, 4.0]))}
    return kw


@st.composite
def cases(draw):
    arch = draw(st.sampled_from(ARCHS))
    seed = draw(st.integers(0, 3))
    model = tiny_model(arch, seed=seed, vocab_size=VOCAB, init=draw(st.sampled_from([0.3, 1.0])))
    prompt = draw(st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=10))
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        free = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0,
                              attention_mask=torch.ones_like(ids))[0, len(prompt):].tolist()
    kw = draw(generation_settings(free))
    eos_off_in_model = draw(st.booleans()) and "eos_token_id" not in kw
    # the draft: the target itself (every draft accepted: long steps, stops inside them) or another model
    draft = draw(st.sampled_from([model, tiny_model(arch, seed=seed + 10, vocab_size=VOCAB)]))
    return arch, seed, model, ids, kw, eos_off_in_model, draft


@pytest.mark.filterwarnings("ignore:Unfeasible length constraints")  # HF's, for min_new_tokens beyond the end
@settings(max_examples=3 * settings.default.max_examples, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), gamma=st.integers(1, 6), block_size=st.integers(2, 8), w=st.integers(1, 3),
       n=st.integers(2, 4))
def test_every_exact_strategy_equals_hf_generate(case, gamma, block_size, w, n):
    arch, seed, model, ids, kw, eos_off_in_model, draft = case
    if eos_off_in_model:  # the user switched stopping off in the model's own generation config
        model, draft = (copy.deepcopy(model),) * 2 if draft is model else (copy.deepcopy(model), draft)
        model.generation_config.eos_token_id = None
    note(f"{arch} seed {seed}, prompt {ids[0].tolist()}, settings {kw}, eos off in model: {eos_off_in_model}")
    with torch.inference_mode():
        expected = model.generate(ids, do_sample=False, attention_mask=torch.ones_like(ids), **kw)
    note(f"expected {expected[0, ids.shape[1]:].tolist()}")
    runs = [("greedy", {}), ("jacobi", {"block_size": block_size}), ("lookahead", {"W": w, "N": n, "G": 4}),
            ("speculative", {"gamma": gamma, "draft_model": draft}),
            ("prompt-lookup", {"max_ngram": 2, "min_ngram": 1})]
    for name, params in runs:
        out = decodekit.generate(model, ids, name, **kw, **params)
        assert torch.equal(out.sequences, expected), f"{name}: {out.sequences[0, ids.shape[1]:].tolist()}"
        with torch.inference_mode():  # the same through HF's own generate
            via_hf = model.generate(ids, do_sample=False, attention_mask=torch.ones_like(ids),
                                    custom_generate=decodekit.hf_generate, strategy=name, **kw, **params)
        assert torch.equal(via_hf, expected), f"{name} via custom_generate: {via_hf[0, ids.shape[1]:].tolist()}"
