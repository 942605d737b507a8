"""decodekit_sdpa: transformers' sdpa attention without copying the cache for every query head that shares a
key-value head. The same attention (against transformers' own function, float64), and the same tokens as
model.generate on the model loaded with plain "sdpa", for every built-in strategy on a left-padded batch."""

import pytest
import torch

import decodekit
from decodekit.core.backend import GROUPED_SDPA, grouped_sdpa_attention
from decodekit.strategies.speculative import truncated_draft
from decodekit.testing import tiny_model
from transformers.integrations.sdpa_attention import sdpa_attention_forward


class _Attention:
    num_key_value_groups = 3  # 6 query heads over 2 key-value heads


def _inputs(batch, tokens, cached, dtype=torch.float64, boolean=False):
    g = torch.Generator().manual_seed(batch * 100 + tokens)
    query = torch.randn(batch, 6, tokens, 8, dtype=dtype, generator=g)  # (B, H, T, D)
    key = torch.randn(batch, 2, cached + tokens, 8, dtype=dtype, generator=g)  # (B, H_kv, S, D)
    value = torch.randn(batch, 2, cached + tokens, 8, dtype=dtype, generator=g)  # (B, H_kv, S, D)
    allowed = torch.ones(batch, 1, tokens, cached + tokens, dtype=torch.bool)  # (B, 1, T, S)
    allowed[..., cached:] = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    allowed[0, ..., : cached // 2] = False  # row 0 left-padded
    mask = allowed if boolean else torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return query, key, value, mask


@pytest.mark.parametrize("batch, tokens, cached", [(1, 2, 5), (2, 6, 40), (3, 4, 17), (1, 1, 9)])
@pytest.mark.parametrize("boolean", [False, True])
def test_the_grouped_attention_is_transformers_sdpa_attention(batch, tokens, cached, boolean):
    query, key, value, mask = _inputs(batch, tokens, cached, boolean=boolean)
    got, _ = grouped_sdpa_attention(_Attention(), query, key, value, mask, scaling=0.3)
    want, _ = sdpa_attention_forward(_Attention(), query, key, value, mask, scaling=0.3)
    assert got.shape == want.shape == (batch, tokens, 6, 8)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_without_a_mask_it_is_transformers_own_path():
    query, key, value, _ = _inputs(2, 5, 7)
    got, _ = grouped_sdpa_attention(_Attention(), query, key, value, None, scaling=0.3)
    assert torch.equal(got, sdpa_attention_forward(_Attention(), query, key, value, None, scaling=0.3)[0])


def _generate_without_eos(model, ids, mask, max_new_tokens):
    config = model.generation_config
    kept, config.eos_token_id = config.eos_token_id, None
    try:
        with torch.inference_mode():
            return model.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=0,
                                  max_new_tokens=max_new_tokens).tolist()
    finally:
        config.eos_token_id = kept


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("strategy, params", [("greedy", {}), ("lookahead", {}), ("lookahead", {"W": 3, "N": 3, "G": 3}),
                                              ("prompt-lookup", {"min_ngram": 1}), ("speculative", {"gamma": 3})])
def test_every_strategy_on_the_grouped_attention_equals_model_generate(arch, strategy, params):
    grouped = tiny_model(arch, attn=GROUPED_SDPA)
    plain = tiny_model(arch)
    assert grouped.config._attn_implementation == GROUPED_SDPA
    prompts = [[5, 6, 7, 5, 6, 7, 5, 6], [9, 10], [11, 12, 13, 11, 12]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])  # (3, 8), left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # (3, 8)
    if strategy == "speculative":  # its draft, cut from the target, attends the same way
        params = {**params, "draft_model": truncated_draft(grouped, layers=1)}
    out = decodekit.generate(grouped, ids, strategy, attention_mask=mask, max_new_tokens=24, eos_token_id=[],
                             pad_token_id=0, **params)
    assert out.sequences.tolist() == _generate_without_eos(plain, ids, mask, 24)


def test_on_a_gpu_decodekits_forwards_leave_cudnn_attention_out(monkeypatch):
    """cuDNN's attention builds a graph per new shape, and every decode step is a new shape: on CUDA the
    backend's forwards run with it disabled (torch's flags inside the context), on the CPU nothing changes;
    every forward of a decode enters the context with the model's device."""
    import contextlib

    import decodekit.core.backend as backend

    with backend.decode_attention_kernels(torch.device("cuda", 0)):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after the forward
    assert isinstance(backend.decode_attention_kernels(torch.device("cpu")), contextlib.nullcontext)

    entered = []
    real = backend.decode_attention_kernels
    monkeypatch.setattr(backend, "decode_attention_kernels", lambda device: entered.append(device) or real(device))
    model = tiny_model("llama", dtype=torch.float32, attn=GROUPED_SDPA)
    out = decodekit.generate(model, torch.tensor([[5, 6, 7, 8]]), "lookahead", W=3, N=3, G=2, max_new_tokens=6)
    steps = out.stats.forwards or out.stats.steps
    assert entered and len(entered) >= steps and set(entered) == {model.device}
    # the single-row forward (the prefill of a pre-batching strategy, the cost model's timings) enters it too
    entered.clear()
    one = backend.HFBackend.for_model(model)
    one.forward(torch.tensor([5, 6, 7]), torch.arange(3), one.new_cache(), None, logits_to_keep=1)  # (1, V)
    assert entered == [model.device]
