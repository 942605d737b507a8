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


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The token whose cumulative-probability interval holds each uniform: probs (..., V), uniforms (...) in [0, 1).

    A deterministic function of the noise: fed fresh U(0, 1) draws it is an exact sample of probs, and
    fed the same draw twice it returns the same token (Jacobi sampling relies on that). A token of
    probability 0 is never returned.
    """
    cdf = probs.double().cumsum(dim=-1)  # (..., V)
    target = uniforms.double().unsqueeze(-1) * cdf[..., -1:]  # (..., 1)
    token = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # (...)
    return token.clamp_(max=probs.shape[-1] - 1)


def residual(target_probs: torch.Tensor, draft_probs: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): what speculative sampling draws from after rejecting a draft token. (V,) -> (V,)

    When p == q everywhere the residual is empty (a rejection then has probability 0); p is returned so
    that the result is always a distribution.
    """
    diff = (target_probs.double() - draft_probs.double()).clamp_(min=0)  # (V,)
    total = diff.sum()
    if total <= 0:
        return target_probs.double()
    return diff / total


def rejection_sample(draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor,
                     generator: torch.Generator) -> tuple[int, int]:
    """Speculative sampling's acceptance rule (Leviathan et al. 2023, Alg. 1; Chen et al. 2023, "modified rejection sampling").

    draft_tokens (G,): the tokens the draft sampled, draft_tokens[i] ~ draft_probs[i] (G, V).
    target_probs (G + 1, V): the target's distribution after the pending token and after each draft token.
    Returns (n, token): the first n draft tokens are accepted and `token` follows them, so that
    draft_tokens[:n] + [token] is an exact sample of the target's distribution.

    Draft token i is accepted with probability min(1, p_i(x) / q_i(x)); at the first rejection the
    replacement is drawn from norm(max(0, p_i - q_i)); when all G are accepted a bonus token is drawn
    from p_G.
    """
    g = int(draft_tokens.shape[0])
    u = torch.rand(g, generator=generator, dtype=torch.float64)  # (G,)
    index = torch.arange(g)
    p = target_probs[:g].double()[index, draft_tokens]  # (G,)
    q = draft_probs.double()[index, draft_tokens]  # (G,)
    # accept while u * q < p, i.e. u < min(1, p / q), written without dividing (q > 0: the draft drew it)
    rejected = (u * q >= p).nonzero()
    if rejected.numel() == 0:
        return g, int(draw(target_probs[g].double(), generator))
    n = int(rejected[0, 0])
    return n, int(draw(residual(target_probs[n], draft_probs[n]), generator))
