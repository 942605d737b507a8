"""Distribution tests: every sampling strategy draws sequences with exactly the model's probabilities.

A tiny float64 model with a 4-token vocabulary: every continuation of 4 new tokens (4**4 = 256
sequences) gets its exact probability from the model (a full forward per prefix, no cache, the same
temperature / top-k / top-p filter). Each strategy then draws N seeded samples through
decodekit.generate, and a chi-square goodness-of-fit test (cells of expected count < 5 pooled)
compares the counts with those probabilities.

False-alarm rate: the test rejects at p < ALPHA = 1e-3, so a correct strategy would fail for about
one generator seed in a thousand. The seeds are fixed, so the outcome is deterministic (not flaky);
the seeds were not chosen by looking at p-values. Four new tokens mean that speculative steps
propose two draft tokens after the prefill's token, so acceptance chains, rejections in the middle
of a chain, residual draws and bonus tokens all occur. A deliberately wrong acceptance rule
(resampling from p instead of the residual after a rejection) must fail the same test: the test of the test.
The `-penalty` cases add repetition_penalty: the exact probabilities then apply HF's own
RepetitionPenaltyLogitsProcessor to each prefix (prompt + the new tokens before it) before
temperature / top-k / top-p, as model.generate does.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from transformers import RepetitionPenaltyLogitsProcessor

import decodekit
from decodekit.core import loop
from decodekit.core.backend import HFBackend
from decodekit.core.decoder import DecodeState
from decodekit.core.kvcache import KVCacheManager
from decodekit.core.sampling import Sampler, SamplingConfig, draw, probabilities, rejection_sample
from decodekit.strategies.speculative import Speculative, truncated_draft
from decodekit.testing import tiny_model

ALPHA = 1e-3
V = 4  # vocabulary
L = 4  # new tokens per sample
N = 2000  # samples per strategy
PROMPT = [1, 3, 0, 2]


def target():
    return tiny_model("llama", seed=5, vocab_size=V, hidden=16, layers=2, init=0.5)


def other_draft():
    return tiny_model("gpt2", seed=6, vocab_size=V, hidden=16, layers=1, init=0.5)


def exact_distribution(model, config: SamplingConfig, prompt: list[int] = PROMPT,
                       repetition_penalty: float | None = None) -> torch.Tensor:
    """P(x_1 .. x_L | prompt) for every sequence, indexed by its base-V number: (V**L,)."""
    joint = torch.ones(1, dtype=torch.float64)  # (V**d,) over prefixes of length d
    for d in range(L):
        prefixes = torch.tensor(list(itertools.product(range(V), repeat=d)), dtype=torch.long).reshape(V ** d, d)
        ids = torch.cat([torch.tensor(prompt).expand(V ** d, len(prompt)), prefixes], dim=1)  # (V**d, P + d)
        with torch.inference_mode():
            logits = model(ids, attention_mask=torch.ones_like(ids)).logits[:, -1].float()  # (V**d, V)
        if repetition_penalty is not None:
            logits = RepetitionPenaltyLogitsProcessor(repetition_penalty)(ids, logits)  # (V**d, V)
        step = probabilities(logits, config).double()  # (V**d, V)
        joint = (joint[:, None] * step).reshape(-1)  # (V**(d+1),)
    return joint


def cell_index(sequences: torch.Tensor, prompt_length: int = len(PROMPT)) -> torch.Tensor:
    new = sequences[:, prompt_length:]  # (N, L)
    assert new.shape[1] == L
    weights = V ** torch.arange(L - 1, -1, -1)  # (L,)
    return (new * weights).sum(dim=1)  # (N,)


def chi_square_p_value(samples: torch.Tensor, probs: torch.Tensor, prompt_length: int = len(PROMPT)) -> float:
    counts = torch.bincount(cell_index(samples, prompt_length), minlength=probs.shape[0]).double()  # (V**L,)
    assert counts[probs == 0].sum() == 0, "a sequence of probability 0 was sampled"
    expected = probs * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def sample(strategy: str, seed: int, config: SamplingConfig, prompt: list[int] = PROMPT, **kw) -> torch.Tensor:
    """N samples in one call: N copies of the prompt, decoded one after another from one generator."""
    generator = torch.Generator().manual_seed(seed)
    out = decodekit.generate(target(), torch.tensor([prompt] * N), strategy, max_new_tokens=L, eos_token_id=[],
                             do_sample=True, generator=generator, temperature=config.temperature,
                             top_k=config.top_k, top_p=config.top_p, **kw)
    assert strategy != "lookahead" or max(out.stats.accepted_histogram) > 1, "no draft was ever accepted"
    return out.sequences  # (N, P + L)


LOOKAHEAD_PROMPT = [1, 2, 1, 2, 3, 2, 1, 1, 3, 0, 2]
PLAIN = SamplingConfig()
FILTERED = SamplingConfig(temperature=0.7, top_k=3, top_p=0.9)

CASES = {
    "greedy-filtered": ("greedy", FILTERED, {}),
    "jacobi": ("jacobi", PLAIN, {"block_size": 3}),
    "jacobi-filtered-sliding": ("jacobi", FILTERED, {"block_size": 4, "max_iterations": 1}),
    "speculative-other-draft": ("speculative", PLAIN, {"gamma": 2, "draft_model": "other"}),
    "speculative-filtered-adaptive": ("speculative", FILTERED, {"gamma": 1, "adaptive": True, "draft_model": "other"}),
    "speculative-self-draft": ("speculative", PLAIN, {"gamma": 2, "draft_model": "self"}),
    # a prompt whose n-grams seed the pool with candidates after the model's likely tokens, so
    # verification accepts and rejects real drafts from the first steps on
    "lookahead": ("lookahead", PLAIN, {"W": 2, "N": 3, "G": 3, "prompt": LOOKAHEAD_PROMPT}),
    "lookahead-filtered": ("lookahead", FILTERED, {"W": 1, "N": 2, "G": 4, "prompt": LOOKAHEAD_PROMPT}),
    # logits processors at every verified position, each with its own prefix, under sampling (a chain
    # verified by the rejection rule, and a tree; the property tests cover every strategy's greedy paths)
    "speculative-penalty-filtered": ("speculative", FILTERED, {"gamma": 2, "draft_model": "other",
                                                               "repetition_penalty": 1.5}),
    "lookahead-penalty": ("lookahead", PLAIN, {"W": 2, "N": 3, "G": 3, "prompt": LOOKAHEAD_PROMPT,
                                               "repetition_penalty": 1.5}),
}


def resolve_draft(kw: dict) -> dict:
    kw = dict(kw)
    choice = kw.get("draft_model")
    if choice is not None:
        kw["draft_model"] = {"other": other_draft, "self": target, "truncated": lambda: truncated_draft(target(), layers=1)}[choice]()
    return kw


@pytest.mark.parametrize("case", list(CASES))
def test_samples_follow_the_models_distribution(case):
    strategy, config, kw = CASES[case]
    kw = dict(kw)
    prompt = kw.pop("prompt", PROMPT)
    probs = exact_distribution(target(), config, prompt, kw.get("repetition_penalty"))
    assert abs(float(probs.sum()) - 1) < 1e-5  # float32 filter probabilities
    p_value = chi_square_p_value(sample(strategy, 1234, config, prompt, **resolve_draft(kw)), probs, len(prompt))
    print(f"{case}: chi-square p = {p_value:.3g}")
    assert p_value > ALPHA, f"{case}: chi-square p = {p_value:.2e}"


# -- the test of the test ---------------------------------------------------------------------------

def wrong_rule(draft_tokens, draft_probs, target_probs, generator):
    """A plausible bug: after a rejection, resample from p instead of norm(max(0, p - q))."""
    n, _ = rejection_sample(draft_tokens, draft_probs, target_probs, generator)
    return n, int(draw(target_probs[n].double(), generator))


class WrongSpeculative(Speculative):
    acceptance_rule = staticmethod(wrong_rule)


def test_a_wrong_acceptance_rule_fails_the_same_test():
    model, draft = target(), other_draft()
    params = Speculative.Params(gamma=2)
    generator = torch.Generator().manual_seed(1234)
    backend, draft_backend = HFBackend.for_model(model), HFBackend.for_model(draft)
    rows = []
    with torch.inference_mode():
        for _ in range(N):  # what decodekit.generate does per row, with the planted rule
            state = DecodeState(backend=backend, kv=KVCacheManager(backend), tokens=list(PROMPT),
                                prompt_length=len(PROMPT), max_new_tokens=L, eos_ids=frozenset(),
                                sampler=Sampler(config=PLAIN, generator=generator), draft=draft_backend)
            loop.run(WrongSpeculative(params), state)
            rows.append(state.tokens)
    p_value = chi_square_p_value(torch.tensor(rows), exact_distribution(model, PLAIN))
    print(f"wrong rule: chi-square p = {p_value:.3g}")
    assert p_value < ALPHA, f"the wrong rule passed: chi-square p = {p_value:.2e}"
