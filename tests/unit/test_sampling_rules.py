"""The speculative acceptance rule and the inverse-CDF draw, as pure functions with an explicit generator.

Statistical checks use fixed seeds (deterministic, never flaky) and a chi-square test at a false-alarm
rate of 1e-4: a correct rule would fail it for fewer than 1 seed in 10,000.
"""

from __future__ import annotations

import pytest
import torch

from decodekit.core.sampling import draw, inverse_cdf, rejection_sample, residual

ALPHA = 1e-4
P0 = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)  # target after the pending token
Q0 = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)  # draft after the pending token
P1 = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)  # target after the first draft token


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """P(chi2 >= observed) for counts against probs (cells with probability 0 must have no counts)."""
    n = counts.sum()
    expected = probs.double() * n
    nonzero = expected > 0
    assert counts[~nonzero].sum() == 0, "a cell of probability 0 was sampled"
    stat = ((counts[nonzero].double() - expected[nonzero]) ** 2 / expected[nonzero]).sum()
    df = int(nonzero.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def wrong_rule(draft_tokens, draft_probs, target_probs, generator):
    """A plausible bug: after a rejection, resample from p instead of norm(max(0, p - q))."""
    n, _ = rejection_sample(draft_tokens, draft_probs, target_probs, generator)
    return n, int(draw(target_probs[n].double(), generator))  # right for the bonus token, wrong after a rejection


def first_token_counts(rule, trials: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    draft_probs = torch.stack([Q0, Q0])  # (G, V)
    target_probs = torch.stack([P0, P1, P1])  # (G + 1, V)
    counts = torch.zeros(4, dtype=torch.long)
    for _ in range(trials):
        drafts = draw(draft_probs, generator)  # (G,)
        n, token = rule(drafts, draft_probs, target_probs, generator)
        first = int(drafts[0]) if n >= 1 else token
        counts[first] += 1
    return counts


def test_inverse_cdf_picks_the_interval_and_skips_zero_probability_tokens():
    probs = torch.tensor([0.0, 0.25, 0.0, 0.75])
    u = torch.tensor([0.0, 0.1, 0.2499, 0.25, 0.9, 0.999999])
    assert inverse_cdf(probs.expand(6, 4), u).tolist() == [1, 1, 1, 3, 3, 3]


def test_inverse_cdf_of_uniform_noise_is_an_exact_sample():
    generator = torch.Generator().manual_seed(11)
    u = torch.rand(20_000, generator=generator, dtype=torch.float64)
    tokens = inverse_cdf(P0.expand(20_000, 4), u)
    assert chi_square_p_value(torch.bincount(tokens, minlength=4), P0) > ALPHA


def test_residual_is_the_normalised_positive_part():
    r = residual(P0, Q0)
    expected = torch.tensor([0.4, 0.1, 0.0, 0.0], dtype=torch.float64) / 0.5
    assert torch.allclose(r, expected)
    assert torch.equal(residual(P0, P0), P0)  # p == q: never used, but still a distribution


def test_identical_draft_and_target_accept_everything():
    generator = torch.Generator().manual_seed(0)
    probs = torch.stack([P0, P1])  # (G, V)
    for _ in range(200):
        drafts = draw(probs, generator)
        n, _ = rejection_sample(drafts, probs, torch.stack([P0, P1, P1]), generator)
        assert n == 2


def test_a_token_the_target_never_emits_is_always_rejected_and_never_resampled():
    target = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.25] * 4], dtype=torch.float64)  # (G + 1, V)
    draft = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # always proposes token 0
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        n, token = rejection_sample(torch.tensor([0]), draft, target, generator)
        assert n == 0 and token in (1, 2)


def test_same_seed_same_result():
    draft_probs, target_probs = torch.stack([Q0, Q0]), torch.stack([P0, P1, P1])
    runs = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(5)
        runs.append([rejection_sample(draw(draft_probs, generator), draft_probs, target_probs, generator)
                     for _ in range(50)])
    assert runs[0] == runs[1]


def test_rejection_sampling_keeps_the_target_distribution():
    counts = first_token_counts(rejection_sample, trials=20_000, seed=3)
    assert chi_square_p_value(counts, P0) > ALPHA


def test_the_distribution_check_catches_a_wrong_rule():
    """The test of the test: the same check, seed and sample size reject a plausible buggy rule."""
    counts = first_token_counts(wrong_rule, trials=20_000, seed=3)
    assert chi_square_p_value(counts, P0) < ALPHA


@pytest.mark.parametrize("other", [[0.45, 0.3, 0.2, 0.05], [0.25, 0.25, 0.25, 0.25]])
def test_chi_square_helper_rejects_a_different_distribution(other):
    generator = torch.Generator().manual_seed(2)
    tokens = draw(torch.tensor(other, dtype=torch.float64).expand(20_000, 4), generator)
    assert chi_square_p_value(torch.bincount(tokens, minlength=4), P0) < ALPHA
