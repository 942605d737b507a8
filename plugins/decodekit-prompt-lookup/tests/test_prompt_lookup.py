"""decodekit-prompt-lookup's own tests. The exactness property is one line per parameter set, through
the `assert_matches_greedy` fixture of decodekit's pytest plugin."""

from __future__ import annotations

import pytest
import torch

import decodekit
from decodekit.errors import StrategyParameterError
from decodekit_prompt_lookup import PromptLookup, find_draft


def test_it_is_registered_through_the_entry_point():
    assert "prompt-lookup" in decodekit.list_strategies()
    from decodekit.plugins.manager import get_registry

    info = get_registry().get("prompt-lookup")
    assert info.cls is PromptLookup and info.plugin == "prompt-lookup" and info.capabilities.exact


@pytest.mark.parametrize("params", [
    {},
    {"max_ngram": 1, "min_ngram": 1, "num_pred_tokens": 1},
    {"max_ngram": 2, "num_pred_tokens": 3},
    {"min_ngram": 1},
    {"max_ngram": 4, "min_ngram": 2, "num_pred_tokens": 20},
])
def test_output_equals_greedy(assert_matches_greedy, params):
    assert_matches_greedy("prompt-lookup", **params)


def test_output_equals_greedy_under_logits_processors(assert_matches_greedy):
    # repetition penalty, no_repeat_ngram_size, ...: each verified row is processed with its own prefix
    from decodekit.testing.strategies import generation_cases, generation_settings

    assert_matches_greedy("prompt-lookup", cases=generation_cases(settings=generation_settings()), min_ngram=1)


def test_every_row_of_a_padded_batch_equals_greedy(assert_matches_greedy):
    # rows of different lengths, left-padded, through one forward per step: each equals its greedy run alone
    from hypothesis import settings

    from decodekit.testing.strategies import batch_cases

    assert_matches_greedy("prompt-lookup", cases=batch_cases(), hypothesis_settings=settings(max_examples=40, deadline=None),
                          min_ngram=1)


# -- the lookup itself ------------------------------------------------------------------------------

def test_the_longest_ngram_wins_over_a_more_recent_shorter_one():
    #          0  1  2  3  4  5  6  7  8  9
    tokens = [5, 6, 7, 1, 2, 9, 7, 3, 5, 6, 7]
    # 3-gram (5, 6, 7) occurred at 0 -> draft what followed it: 1 2 9
    assert find_draft(tokens, max_ngram=3, min_ngram=1, num_pred_tokens=3) == [1, 2, 9]
    # with 1-grams only, the most recent earlier 7 (at 6) is followed by 3 5 6
    assert find_draft(tokens, max_ngram=1, min_ngram=1, num_pred_tokens=3) == [3, 5, 6]


def test_the_most_recent_match_with_a_full_draft_wins():
    tokens = [4, 8, 1, 1, 4, 8, 2, 2, 4, 8]
    assert find_draft(tokens, max_ngram=2, min_ngram=2, num_pred_tokens=2) == [2, 2]


def test_without_a_full_draft_the_longest_continuation_is_taken():
    assert find_draft([1, 1, 1, 1], max_ngram=2, min_ngram=1, num_pred_tokens=5) == [1, 1]


def test_no_match_drafts_nothing():
    assert find_draft([1, 2, 3, 4], max_ngram=3, min_ngram=1, num_pred_tokens=5) == []
    assert find_draft([1, 2, 3, 1, 2], max_ngram=3, min_ngram=3, num_pred_tokens=5) == []
    assert find_draft([7], max_ngram=3, min_ngram=1, num_pred_tokens=5) == []


def test_drafts_are_accepted_when_the_output_repeats(decodekit_tiny_model):
    # with a 12-token vocabulary this model's greedy output falls into a loop: drafts get accepted
    model = decodekit_tiny_model("gpt2", seed=1, vocab_size=12)
    ids = torch.tensor([[5, 6, 7, 8, 9, 3, 4, 10]])
    out = decodekit.generate(model, ids, "prompt-lookup", max_new_tokens=24, eos_token_id=[])
    ref = decodekit.generate(model, ids, "greedy", max_new_tokens=24, eos_token_id=[])
    assert torch.equal(out.sequences, ref.sequences)
    assert out.stats.mean_accepted > 1.5 and max(out.stats.accepted_histogram) > 2


# -- parameters -------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, message", [
    ({"max_ngram": 0}, "prompt-lookup: max_ngram must be >= 1, got 0"),
    ({"num_pred_tokens": 1000}, "prompt-lookup: num_pred_tokens must be <= 256, got 1000"),
    ({"max_ngram": 2, "min_ngram": 3}, "prompt-lookup: min_ngram must be <= max_ngram (2), got 3"),
    ({"max_ngram": 1}, "prompt-lookup: min_ngram must be <= max_ngram (1), got 2; lower min_ngram as well"),
    ({"max_ngram": 2.5}, "prompt-lookup: max_ngram must be an integer, got 2.5"),
    ({"max_ngrams": 2}, "unknown parameter 'max_ngrams' for 'prompt-lookup'; did you mean 'max_ngram'?"),
])
def test_bad_parameters_are_named_with_what_is_allowed(decodekit_tiny_model, params, message):
    with pytest.raises(StrategyParameterError) as info:
        decodekit.generate(decodekit_tiny_model("llama"), torch.tensor([[5, 6]]), "prompt-lookup", **params)
    assert message in str(info.value)


# -- the step planner ------------------------------------------------------------------------------

def test_the_planner_sizes_the_drafts_to_the_cost_curve(decodekit_tiny_model):
    from decodekit.core.costmodel import CostModel

    model = decodekit_tiny_model("gpt2", seed=1, vocab_size=12)  # its greedy output loops: drafts pay
    ids = torch.tensor([[5, 6, 7, 8, 9, 3, 4, 10]])
    ref = decodekit.generate(model, ids, "greedy", max_new_tokens=24, eos_token_id=[])
    runs = {name: decodekit.generate(model, ids, "prompt-lookup", max_new_tokens=24, eos_token_id=[],
                                     cost_model=cost.frozen(), **params)
            for name, cost, params in [("flat", CostModel.flat(1.0), {}), ("steep", CostModel.linear(1.0, 1.0), {}),
                                       ("unplanned", CostModel.linear(1.0, 1.0), {"plan": False})]}
    for out in runs.values():
        assert torch.equal(out.sequences, ref.sequences)
    assert runs["flat"].stats.mean_accepted > 1.5  # whole drafts go through and are accepted
    # one token per step after the prefill's: nothing pays where a draft token costs a whole forward, and no
    # probe either, since a 2- or 3-token match's prior (0.25, 0.35) is under half the acceptance at which
    # it would break even (1.0)
    assert runs["steep"].stats.tokens_computed == runs["steep"].stats.steps - 1
    assert runs["unplanned"].stats.tokens_computed > runs["unplanned"].stats.steps  # plan=false drafts regardless
