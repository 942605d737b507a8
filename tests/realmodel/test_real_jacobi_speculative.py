"""Real model: Jacobi and greedy-mode speculative decoding equal greedy on 10 Spec-Bench prompts.

SmolLM2-135M-Instruct in float32, 64 new tokens per prompt, prompts spread over the categories
(tests.helpers; the project's own prompts where Spec-Bench is absent). The draft for speculative
decoding is the target's own first 4 layers (truncated_draft), so no second model is needed. So weak a
draft is rejected at most steps (on these prompts 551 of 581 steps commit only the target's own token),
which puts the rejection and correction path on every prompt at a fraction of a 22-layer draft's cost
(on one of these prompts, float32, an AVX2-only EPYC: 2.3x greedy's time instead of 4.1x); many-token
acceptances are what the property tests draw, with drafts that agree often.
"""

from __future__ import annotations

import pytest

import decodekit
from decodekit.strategies.speculative import truncated_draft
from tests.helpers import first_difference, spread_prompts, top2_margin

pytestmark = pytest.mark.realmodel

MAX_NEW_TOKENS = 64


@pytest.fixture(scope="module")
def greedy_outputs(default_model_fp32):
    model, tokenizer = default_model_fp32
    out = []
    for _, prompt in spread_prompts(10):
        ids = decodekit.models.chat_ids(tokenizer, prompt)
        out.append((ids, decodekit.generate(model, ids, "greedy", max_new_tokens=MAX_NEW_TOKENS).sequences))
    return out


@pytest.mark.parametrize("strategy, params", [
    ("jacobi", {"block_size": 8, "max_iterations": 8}),
    ("speculative", {"gamma": 3, "draft_layers": 4}),
])
def test_equals_greedy_on_spec_bench(default_model_fp32, greedy_outputs, strategy, params):
    model, _ = default_model_fp32
    params = dict(params)
    if "draft_layers" in params:
        params["draft_model"] = truncated_draft(model, layers=params.pop("draft_layers"))
    for ids, expected in greedy_outputs:
        got = decodekit.generate(model, ids, strategy, max_new_tokens=MAX_NEW_TOKENS, **params).sequences[0].tolist()
        want = expected[0].tolist()
        if got != want:
            at = first_difference(got, want)
            pytest.fail(f"{strategy} differs from greedy at new token {at - ids.shape[1]}; greedy top-2 logit "
                        f"margin there {top2_margin(model, want[:at]):.3g}")
