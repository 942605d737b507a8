"""Speculative decoding: parameters and refusals, exactness against greedy, both caches, adaptive gamma,
sampling determinism, and the truncated draft built from the target."""

from __future__ import annotations

import contextlib

import pytest
import torch

import decodekit
from decodekit.errors import InputError, ModelNotSupportedError, StrategyParameterError
from decodekit.strategies.speculative import Speculative, int8_draft, truncated_draft
from decodekit.testing import tiny_model

PROMPT = torch.tensor([[5, 6, 7, 8]])


@contextlib.contextmanager
def count_forwards(*models):
    calls = []
    handles = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in models]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def greedy(model, ids=PROMPT, **kw):
    return decodekit.generate(model, ids, "greedy", **kw).sequences


def test_registered_with_its_capabilities():
    assert "speculative" in decodekit.list_strategies()
    caps = Speculative.capabilities
    assert caps.exact and caps.supports_sampling and caps.needs_draft_model


@pytest.mark.parametrize("kw, message", [
    ({"gamma": 0}, "speculative: gamma must be >= 1, got 0"),
    ({"gamma": 65}, "speculative: gamma must be <= 64, got 65"),
    ({"gamma": 8, "adaptive": True, "max_gamma": 4}, "max_gamma must be >= gamma (8) when adaptive=True, got 4"),
    ({"adaptive": "yes"}, "speculative: adaptive must be true or false, got 'yes'"),
    ({"gama": 3}, "unknown parameter 'gama' for 'speculative'; did you mean 'gamma'?"),
])
def test_bad_parameters_are_refused_before_any_forward(kw, message):
    model, draft = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    with count_forwards(model, draft) as calls, pytest.raises(StrategyParameterError) as info:
        decodekit.generate(model, PROMPT, "speculative", draft_model=draft, **kw)
    assert message in str(info.value)
    assert not calls


def test_missing_or_mismatched_draft_is_refused_before_any_forward():
    model = tiny_model("llama", seed=1)
    other_vocab = tiny_model("llama", seed=2, vocab_size=64)
    with count_forwards(model, other_vocab) as calls:
        with pytest.raises(InputError, match="needs draft_model="):
            decodekit.generate(model, PROMPT, "speculative")
        with pytest.raises(InputError, match=r"draft_model's vocabulary \(64 tokens\) differs"):
            decodekit.generate(model, PROMPT, "speculative", draft_model=other_vocab)
    assert not calls


def drafts_for(model, arch):
    return {
        "itself": model,
        "other random model": tiny_model(arch, seed=9),
        "other architecture": tiny_model("gpt2" if arch != "gpt2" else "llama", seed=9),
        "first layer": truncated_draft(model, layers=1),
    }


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("gamma, adaptive", [(1, False), (3, False), (7, False), (2, True)])
def test_equals_greedy_with_any_draft(arch, gamma, adaptive):
    model = tiny_model(arch, seed=1, layers=3)
    expected = greedy(model, max_new_tokens=30, eos_token_id=[])
    for label, draft in drafts_for(model, arch).items():
        out = decodekit.generate(model, PROMPT, "speculative", draft_model=draft, max_new_tokens=30,
                                 eos_token_id=[], gamma=gamma, adaptive=adaptive)
        assert torch.equal(out.sequences, expected), label


def test_self_draft_accepts_everything_and_adaptive_gamma_grows():
    model = tiny_model("llama", seed=1)
    fixed = decodekit.generate(model, PROMPT, "speculative", draft_model=model, max_new_tokens=41,
                               eos_token_id=[], gamma=4)
    assert dict(fixed.stats.accepted_histogram) == {1: 1, 5: 8}  # the prefill's token, then gamma + bonus each step
    grown = decodekit.generate(model, PROMPT, "speculative", draft_model=model, max_new_tokens=41,
                               eos_token_id=[], gamma=1, adaptive=True, max_gamma=6)
    assert list(grown.stats.accepted_histogram) == [1, 2, 3, 4, 5, 6, 7]  # gamma 1, 2, ..., 6, 6 ...
    assert torch.equal(grown.sequences, fixed.sequences)


def test_adaptive_gamma_shrinks_when_nothing_is_accepted():
    model, draft = tiny_model("llama", seed=1), tiny_model("llama", seed=9)
    calls_fixed, calls_adaptive = [], []
    for calls, adaptive in ((calls_fixed, False), (calls_adaptive, True)):
        handle = draft.register_forward_pre_hook(lambda *_, c=calls: c.append(1))
        try:
            decodekit.generate(model, PROMPT, "speculative", draft_model=draft, max_new_tokens=30,
                               eos_token_id=[], gamma=6, adaptive=adaptive)
        finally:
            handle.remove()
    assert len(calls_adaptive) < len(calls_fixed) / 2


def test_stops_at_eos_and_max_new_tokens():
    model = tiny_model("qwen2", seed=1)
    full = greedy(model, max_new_tokens=20, eos_token_id=[])[0, 4:].tolist()
    eos = full[6]
    for draft in (model, truncated_draft(model, layers=1)):
        out = decodekit.generate(model, PROMPT, "speculative", draft_model=draft, max_new_tokens=20,
                                 eos_token_id=eos, gamma=5)
        assert out.sequences[0, 4:].tolist() == full[: full.index(eos) + 1]
        for n in (1, 2, 3, 7):
            out = decodekit.generate(model, PROMPT, "speculative", draft_model=draft, max_new_tokens=n,
                                     eos_token_id=[], gamma=5)
            assert out.sequences[0, 4:].tolist() == full[:n]


def test_batch_rows_are_decoded_independently():
    model = tiny_model("llama", seed=1)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    out = decodekit.generate(model, ids, "speculative", draft_model=truncated_draft(model, layers=1),
                             max_new_tokens=12, eos_token_id=[], gamma=3)
    assert torch.equal(out.sequences, greedy(model, ids, max_new_tokens=12, eos_token_id=[]))


def test_sampling_same_seed_same_output_and_top_k_one_is_greedy():
    model, draft = tiny_model("llama", seed=3), tiny_model("llama", seed=4)

    def sample(seed, **kw):
        generator = torch.Generator().manual_seed(seed)
        return decodekit.generate(model, PROMPT, "speculative", draft_model=draft, max_new_tokens=24,
                                  eos_token_id=[], do_sample=True, generator=generator, gamma=3, **kw).sequences

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))
    assert torch.equal(sample(7, top_k=1), greedy(model, max_new_tokens=24, eos_token_id=[]))


def test_greedy_sampling_same_seed_same_output():
    model = tiny_model("llama", seed=3)

    def sample(seed):
        generator = torch.Generator().manual_seed(seed)
        return decodekit.generate(model, PROMPT, "greedy", max_new_tokens=24, eos_token_id=[], do_sample=True,
                                  generator=generator, temperature=0.8, top_p=0.9).sequences

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


# -- truncated_draft ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "mistral"])
def test_truncated_draft_with_every_layer_is_the_target(arch):
    model = tiny_model(arch, seed=1, layers=3)
    before = torch.get_rng_state()
    draft = truncated_draft(model, layers=3)
    assert torch.equal(torch.get_rng_state(), before)  # built without moving the global RNG
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.inference_mode():
        assert torch.equal(draft(ids).logits, model(ids).logits)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_truncated_draft_shares_the_targets_weights(arch):
    model = tiny_model(arch, seed=1, layers=3)
    draft = truncated_draft(model, layers=1)
    target_ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert all(t.data_ptr() in target_ptrs for t in draft.state_dict().values())
    assert draft.config.get_text_config().num_hidden_layers == 1
    assert model.config.get_text_config().num_hidden_layers == 3
    assert draft.dtype == model.dtype and not draft.training


@pytest.mark.parametrize("layers", [0, 4, True, 1.5])
def test_truncated_draft_refuses_a_bad_layer_count(layers):
    with pytest.raises(InputError, match=r"truncated_draft: layers must be an integer in \[1, 3\]"):
        truncated_draft(tiny_model("llama", seed=1, layers=3), layers=layers)


def test_truncated_draft_refuses_a_non_model():
    with pytest.raises(ModelNotSupportedError, match="PreTrainedModel"):
        truncated_draft(object(), layers=1)


def test_cli_refuses_draft_layers_for_a_strategy_without_a_draft(capsys):
    from decodekit.cli import main

    assert main(["generate", "--strategy", "jacobi", "--draft-layers", "3", "hi"]) == 2
    assert "--draft-layers was given but strategy 'jacobi' does not use a draft model" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_int8_draft_is_exact_and_mostly_accepted(arch):
    model = tiny_model(arch, seed=1, dtype=torch.float32)
    draft = int8_draft(model)
    assert draft is not model and draft.dtype == torch.float32
    out = decodekit.generate(model, PROMPT, "speculative", draft_model=draft, max_new_tokens=30,
                             eos_token_id=[], gamma=4)
    assert torch.equal(out.sequences, greedy(model, max_new_tokens=30, eos_token_id=[]))
    assert out.stats.mean_accepted > 2


def test_int8_draft_refuses_float64():
    with pytest.raises(InputError, match="int8_draft needs a float32 model on the CPU, got torch.float64"):
        int8_draft(tiny_model("llama", seed=1))
