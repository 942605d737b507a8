"""Tiny random causal LMs of several real architectures, built from transformers configs (via the backend).

They are real transformers models (real attention, RoPE or learned positions, grouped-query
attention where the architecture has it), just small and randomly initialised, so a property test
can run hundreds of generations in seconds. Built under a forked RNG: global RNG state is untouched.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from decodekit.core.costmodel import CostModel, use_cost_model

ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt2")


def _config(arch: str, vocab_size: int, hidden: int, layers: int, init: float, attn: str) -> Any:
    from decodekit.core.backend import config_for

    common = dict(vocab_size=vocab_size, initializer_range=init, attn_implementation=attn,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        return config_for("gpt2", n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, **common)
    shared = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **common)
    if arch == "llama":
        return config_for("llama", **shared)
    if arch == "qwen2":
        return config_for("qwen2", **shared, use_sliding_window=False)
    if arch == "mistral":
        return config_for("mistral", **shared, sliding_window=None)
    raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")


# What a forward of a tiny model "costs" for strategies that plan their steps: a fixed CPU-like curve
# (a few tokens cost little more than one, many cost several), so that planned strategies make the same
# choices on every machine and no test spends seconds measuring a random model's meaningless timings.
# Tests that want another curve pass generate(..., cost_model=...).
TINY_MODEL_COST = CostModel.from_points({1: 1.0, 2: 1.1, 4: 1.2, 8: 1.4, 16: 1.8, 32: 2.6, 64: 4.2}).frozen()


@functools.lru_cache(maxsize=128)  # tiny models are a few hundred KB each
def _build(arch: str, seed: int, vocab_size: int, hidden: int, layers: int, init: float, attn: str,
           dtype: torch.dtype) -> Any:
    from decodekit.core.backend import model_from_config

    config = _config(arch, vocab_size, hidden, layers, init, attn)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_from_config(config, dtype)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    use_cost_model(model, TINY_MODEL_COST)
    return model.eval()


def tiny_model(arch: str = "llama", *, seed: int = 0, vocab_size: int = 96, hidden: int = 32, layers: int = 2,
               init: float = 0.3, attn: str = "sdpa", dtype: torch.dtype = torch.float64) -> Any:
    """A small random model of `arch` (cached: the same arguments give the same object; do not modify it).

    init is the weights' standard deviation: larger values give peakier, more repetitive outputs,
    which is what exercises n-gram strategies. eos is token 2.
    """
    return _build(arch, seed, vocab_size, hidden, layers, float(init), attn, dtype)
