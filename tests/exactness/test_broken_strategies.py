"""The exactness suite must catch bugs: both deliberately broken strategies fail the property check
and `decodekit verify`, and the failure says where."""

from __future__ import annotations

import re

import pytest
import torch

import decodekit
from decodekit.cli import main
from decodekit.testing import assert_matches_greedy, compare_with_greedy, tiny_model
from decodekit.testing.strategies import FromOutput

FIRST_DIFFERENCE = re.compile(r"differs from greedy at new token (\d+) \(sequence position \d+\): greedy (\d+), \S+ (\d+)")


@pytest.mark.parametrize("which", ["one-too-many", "wrong-kv"])
def test_the_property_check_fails_on_a_broken_strategy_and_says_where(broken, which):
    name = broken[which]
    with pytest.raises(AssertionError) as info:
        assert_matches_greedy(name)
    message = str(info.value)
    found = FIRST_DIFFERENCE.search(message)
    assert found, message
    assert name in message and "model: tiny" in message and "prompt (" in message
    greedy_token, strategy_token = int(found.group(2)), int(found.group(3))
    assert greedy_token != strategy_token


def test_drawn_generation_settings_catch_a_strategy_that_ignores_logits_processors(broken):
    from decodekit.testing.strategies import generation_cases, generation_settings

    with pytest.raises(AssertionError) as info:
        assert_matches_greedy(broken["raw-argmax"], cases=generation_cases(settings=generation_settings()))
    message = str(info.value)
    assert FIRST_DIFFERENCE.search(message) and "settings: {" in message, message


def test_one_too_many_is_wrong_exactly_at_the_first_rejected_draft(broken):
    model = tiny_model("llama")
    result = compare_with_greedy(model, [3], broken["one-too-many"], max_new_tokens=3, eos_token_id=None)
    # its first step drafts [pending] * 2, greedy's second token differs, and that draft is committed anyway
    assert result.greedy[0] == result.output[0]
    assert result.position == 1 and result.output[1] == result.greedy[0] != result.greedy[1]
    assert "differs from greedy at new token 1 " in result.describe()


def test_wrong_kv_commits_right_tokens_first_and_goes_wrong_later(broken):
    model = tiny_model("llama")
    result = compare_with_greedy(model, [3], broken["wrong-kv"], max_new_tokens=8, eos_token_id=[])
    assert result.position is not None and result.position >= 2  # the corrupted cache shows later
    assert result.greedy[: result.position] == result.output[: result.position]


@pytest.mark.realmodel
@pytest.mark.parametrize("which", ["one-too-many", "wrong-kv"])
def test_verify_fails_on_a_broken_strategy_and_says_where(broken, questions, capsys, which):
    rc = main(["verify", "--strategy", broken[which], "--questions", str(questions), "--max-new-tokens", "16",
               "--limit", "2"])
    out = capsys.readouterr().out
    assert rc == 1, out
    lines = [line for line in out.splitlines() if line.startswith("MISMATCH")]
    assert len(lines) >= 1, out
    assert re.search(r"differs at new token \d+: greedy \d+ '.*', strategy \d+ '.*'; greedy top-2 margin "
                     r"[0-9.e+-]+ >= 0\.001 \(float32\): REAL MISMATCH", lines[0]), out
    assert re.search(r"2 prompts: \d identical, \d near-ties, [12] real mismatches", out), out


@pytest.mark.realmodel
def test_check_against_golden_outputs_catches_a_broken_strategy(broken, questions, tmp_path, capsys):
    golden = tmp_path / "golden.jsonl"
    assert main(["verify", "--strategy", "greedy", "--questions", str(questions), "--max-new-tokens", "16",
                 "--record", str(golden)]) == 0
    assert len(golden.read_text().splitlines()) == 2
    capsys.readouterr()
    assert main(["verify", "--strategy", "greedy", "--check", str(golden)]) == 0
    assert "2 identical, 0 near-ties, 0 real mismatches" in capsys.readouterr().out
    assert main(["verify", "--strategy", broken["one-too-many"], "--check", str(golden)]) == 1
    out = capsys.readouterr().out
    assert "golden" in out and "differs at new token 1:" in out and "REAL MISMATCH" in out
