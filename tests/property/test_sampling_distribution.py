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
The batch tests decode two different prompts in one left-padded batch: each row must follow its own
prompt's distribution, the same seed must give the same batch, and a row's draws must not depend on
the other row (its own stream, seeded from the call's generator).
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
            loop.run_one(WrongSpeculative(params), state)
            rows.append(state.tokens)
    p_value = chi_square_p_value(torch.tensor(rows), exact_distribution(model, PLAIN))
    print(f"wrong rule: chi-square p = {p_value:.3g}")
    assert p_value < ALPHA, f"the wrong rule passed: chi-square p = {p_value:.2e}"


# -- a left-padded batch of two different prompts -----------------------------------------------------
#
# Row 0 (PROMPT, 4 tokens) is left-padded to row 1's length (LOOKAHEAD_PROMPT, 11 tokens). One call
# decodes N copies of that 2-row batch (2N rows, rows alternating); each row has its own stream (api
# `_row_samplers`), so every row-0 sample must follow PROMPT's distribution and every row-1 sample
# LOOKAHEAD_PROMPT's. The two distributions are far apart: each row's samples are also checked to be
# rejected against the other row's, so a row sampled from the wrong prefix (or from its padding) fails.

BATCH_CASES = {
    "greedy-filtered": ("greedy", FILTERED, {}),
    "jacobi": ("jacobi", PLAIN, {"block_size": 3}),
    "speculative-other-draft": ("speculative", PLAIN, {"gamma": 2, "draft_model": "other"}),
    "lookahead": ("lookahead", PLAIN, {"W": 2, "N": 3, "G": 3}),
}


def padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) (B, W): the prompts left-padded with 0 to the longest."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])  # (B, W)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # (B, W)
    return ids, mask


def sample_batch(strategy: str, ids: torch.Tensor, mask: torch.Tensor, seed: int, config: SamplingConfig,
                 max_new_tokens: int = L, eos: list[int] | None = None, **kw) -> decodekit.GenerationOutput:
    generator = torch.Generator().manual_seed(seed)
    return decodekit.generate(target(), ids, strategy, attention_mask=mask, max_new_tokens=max_new_tokens,
                              eos_token_id=eos or [], do_sample=True, generator=generator,
                              temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                              **resolve_draft(kw))


def fit(samples: torch.Tensor, probs: torch.Tensor, prompt_length: int) -> float:
    """chi_square_p_value, 0 where a sample has probability 0 under `probs`."""
    counts = torch.bincount(cell_index(samples, prompt_length), minlength=probs.shape[0])  # (V**L,)
    if counts[probs == 0].sum() > 0:
        return 0.0
    return chi_square_p_value(samples, probs, prompt_length)


@pytest.mark.parametrize("case", list(BATCH_CASES))
def test_each_row_of_a_padded_batch_follows_its_own_distribution(case):
    strategy, config, kw = BATCH_CASES[case]
    prompts = [PROMPT, LOOKAHEAD_PROMPT]
    ids, mask = padded(prompts)
    width = ids.shape[1]
    result = sample_batch(strategy, ids.repeat(N, 1), mask.repeat(N, 1), 4321, config, **kw)
    out = result.sequences  # (2N, W + L)
    assert torch.equal(out[:, :width], ids.repeat(N, 1))
    assert strategy in ("greedy", "jacobi") or max(result.stats.accepted_histogram) > 1, "no draft was ever accepted"
    probs = [exact_distribution(target(), config, p) for p in prompts]
    for row in range(2):
        samples = out[row::2]  # (N, W + L): every copy's row `row`
        own, other = fit(samples, probs[row], width), fit(samples, probs[1 - row], width)
        print(f"{case} row {row}: chi-square p = {own:.3g} (against the other row's distribution {other:.3g})")
        assert own > ALPHA, f"{case}: row {row}'s samples do not follow its prompt's distribution (p = {own:.2e})"
        assert other < ALPHA, f"{case}: the test cannot tell row {row}'s distribution from the other row's"


@pytest.mark.parametrize("case", list(BATCH_CASES))
def test_a_padded_batch_is_reproducible_and_its_rows_draw_independently(case):
    """Same seed, same batch; a row's output does not depend on the other row's prompt, length or stop;
    two rows with the same prompt draw from different streams."""
    strategy, config, kw = BATCH_CASES[case]
    others = [LOOKAHEAD_PROMPT, [3], [2, 1, 1, 3, 0, 3, 1, 2, 0, 0, 1, 3, 3, 2]]  # longer, shorter, longest
    row0: dict[tuple, set] = {}
    for seed in range(4):
        for eos in ([], [3]):  # with eos 3 the rows stop (and leave the forward) at different steps
            for other in others:
                ids, mask = padded([PROMPT, other])
                out = sample_batch(strategy, ids, mask, seed, config, max_new_tokens=12, eos=eos, **kw).sequences
                again = sample_batch(strategy, ids, mask, seed, config, max_new_tokens=12, eos=eos, **kw).sequences
                assert torch.equal(out, again), f"{case}: seed {seed} gave two different batches"
                new = out[0, ids.shape[1]:].tolist()
                if eos and 3 in new:
                    new = new[: new.index(3) + 1]
                row0.setdefault((seed, tuple(eos)), set()).add(tuple(new))
    changed = {key: outs for key, outs in row0.items() if len(outs) > 1}
    assert not changed, f"{case}: row 0's output changed with row 1's prompt: {changed}"
    assert len({outs.pop() for (seed, eos), outs in row0.items() if not eos}) > 1, f"{case}: every seed drew the same"
    same = [sample_batch(strategy, *padded([PROMPT, PROMPT]), seed, config, max_new_tokens=12, **kw).sequences
            for seed in range(4)]
    assert any(not torch.equal(s[0], s[1]) for s in same), f"{case}: two rows with one prompt drew the same tokens"
