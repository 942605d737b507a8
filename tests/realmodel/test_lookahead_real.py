"""On the real default model in float32, lookahead's output is identical to greedy decoding."""

import pytest

import decodekit
from tests.helpers import first_difference, spread_prompts, top2_margin

pytestmark = pytest.mark.realmodel
PROMPTS = spread_prompts(20)  # every Spec-Bench category at least once


@pytest.mark.parametrize("category, prompt", PROMPTS, ids=[f"{i}-{c}" for i, (c, _) in enumerate(PROMPTS)])
def test_lookahead_default_config_equals_greedy(default_model_fp32, category, prompt):
    model, tokenizer = default_model_fp32
    ids = decodekit.models.chat_ids(tokenizer, prompt)
    greedy = decodekit.generate(model, ids, "greedy", max_new_tokens=128)
    out = decodekit.generate(model, ids, "lookahead", max_new_tokens=128)
    want, got = greedy.sequences[0].tolist(), out.sequences[0].tolist()
    if got != want:
        at = first_difference(got, want)
        margin = top2_margin(model, want[:at])
        pytest.fail(f"{category}: lookahead differs from greedy at position {at} (new token {at - ids.shape[1]}); "
                    f"greedy {want[at]} vs lookahead {got[at]}, greedy top-2 logit margin there {margin:.3g}")
