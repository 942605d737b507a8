"""Sampling math as pure functions: logits -> probabilities with temperature / top-k / top-p.

Every random draw takes an explicit torch.Generator; nothing here seeds or reads global RNG state.
"""

from __future__ import annotations

import attrs
import torch

from decodekit.errors import InputError


@attrs.frozen(kw_only=True)
class SamplingConfig:
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter

    def __attrs_post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise InputError(f"temperature must be a number > 0, got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be a number in (0, 1], got {self.top_p!r}")


def probabilities(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """The distribution the sampler draws from, for each row of logits (..., V) -> (..., V) float32."""
    scores = logits.float() / config.temperature  # (..., V)
    if config.top_k and config.top_k < scores.shape[-1]:
        kth = scores.topk(config.top_k, dim=-1).values[..., -1:]  # (..., 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)  # (..., V)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # (..., V)
        # drop a token when the tokens ranked above it already reach top_p (the top one always stays)
        drop_sorted = (cumulative - sorted_scores.softmax(dim=-1)) >= config.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(dim=-1)


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One sample per row of probs (..., V) -> (...) int64."""
    flat = probs.reshape(-1, probs.shape[-1])  # (R, V)
    picked = torch.multinomial(flat, 1, generator=generator)  # (R, 1)
    return picked.reshape(probs.shape[:-1])


@attrs.define(eq=False)
class Sampler:
    """What DecodeState.choose uses when do_sample=True."""

    config: SamplingConfig
    generator: torch.Generator

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return probabilities(logits, self.config)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        return draw(self.probabilities(logits), self.generator)
