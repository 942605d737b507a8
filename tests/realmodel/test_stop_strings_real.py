"""Real model: stop strings end every exact strategy exactly where HF greedy ends, inside multi-token steps too.

SmolLM2-135M-Instruct in float32, 10 Spec-Bench prompts spread over the categories. Each prompt's stop
strings come from HF greedy's own stop-free continuation: a word from its first half and a piece of
a later word that need not end on a token boundary, so stops fall at many places (where a strategy's
step accepted several tokens, and where HF's per-step check would run past them). The reference is
model.generate(do_sample=False, stop_strings=..., tokenizer=...); every strategy must equal it.
`stats.cut_tokens` counts the tokens a step had accepted past the stop: the test asserts that some
stops did fall inside a multi-token step.
"""

from __future__ import annotations

import pytest
import torch

import decodekit
from decodekit.strategies.speculative import truncated_draft
from tests.helpers import first_difference, spread_prompts, top2_margin

pytestmark = pytest.mark.realmodel

MAX_NEW_TOKENS = 40
STRATEGIES = [("greedy", {}), ("jacobi", {"block_size": 6}), ("lookahead", {}),
              ("speculative", {"gamma": 4, "draft_layers": 22}), ("prompt-lookup", {})]


def stop_strings_for(text: str, index: int) -> list[str]:
    """Two stop strings cut from the stop-free continuation: a whole word, and a later word's last letters."""
    words = [w for w in text.split() if len(w) >= 3]
    if len(words) < 4:
        return ["\n\n"]
    first = words[len(words) // 3 + index % 3]
    later = words[2 * len(words) // 3]
    return [first, later[-3:]]


@pytest.fixture(scope="module")
def cases(default_model_fp32):
    model, tokenizer = default_model_fp32
    out = []
    for i, (_, prompt) in enumerate(spread_prompts(10)):
        ids = decodekit.models.chat_ids(tokenizer, prompt)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            free = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
            stops = stop_strings_for(tokenizer.decode(free[0, ids.shape[1]:]), i)
            expected = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                                      stop_strings=stops, tokenizer=tokenizer)
        out.append((ids, stops, expected))
    return out


def test_stop_strings_match_hf_greedy_for_every_exact_strategy(default_model_fp32, cases):
    model, tokenizer = default_model_fp32
    stopped = sum(e.shape[1] - ids.shape[1] < MAX_NEW_TOKENS for ids, _, e in cases)
    assert stopped >= 8, f"only {stopped} of {len(cases)} references ended at a stop string"
    cut_inside_steps: dict[str, int] = {}
    for name, params in STRATEGIES:
        params = dict(params)
        if "draft_layers" in params:
            params["draft_model"] = truncated_draft(model, layers=params.pop("draft_layers"))
        for ids, stops, expected in cases:
            out = decodekit.generate(model, ids, name, max_new_tokens=MAX_NEW_TOKENS, stop_strings=stops,
                                     tokenizer=tokenizer, **params)
            got, want = out.sequences[0].tolist(), expected[0].tolist()
            if got != want:
                at = first_difference(got, want)
                pytest.fail(f"{name} with stop strings {stops!r} differs from HF greedy at new token "
                            f"{at - ids.shape[1]} ({len(got) - ids.shape[1]} vs {len(want) - ids.shape[1]} new "
                            f"tokens); top-2 logit margin there {top2_margin(model, want[:at]):.3g}")
            cut_inside_steps[name] = cut_inside_steps.get(name, 0) + (out.stats.cut_tokens > 0)
    print(f"prompts whose stop fell inside a multi-token step, per strategy: {cut_inside_steps}")
    assert cut_inside_steps["greedy"] == 0
    assert sum(cut_inside_steps.values()) >= 3, f"too few stops inside multi-token steps: {cut_inside_steps}"
