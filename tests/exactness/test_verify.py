"""`decodekit verify` pieces that need no real model: prompt selection, near-tie classification, errors."""

from __future__ import annotations

import json

import pytest
import torch

from decodekit.cli import main
from decodekit.cli_verify import (NEAR_TIE_MARGIN, SPEC_BENCH_ENV, Prompt, default_questions_path, judge,
                                  load_golden, load_questions, select, top2_margin)
from decodekit.testing import tiny_model


def rows(*categories: str) -> list[Prompt]:
    return [Prompt(question_id=i, category=c, text=f"q{i}") for i, c in enumerate(categories)]


def test_select_per_category_and_limit():
    data = rows("a", "a", "a", "b", "c", "c")
    assert [r.question_id for r in select(data, 1, None)] == [0, 3, 4]
    assert [r.question_id for r in select(data, 2, None)] == [0, 1, 3, 4, 5]
    assert [r.question_id for r in select(data, None, 2)] == [0, 1]


def test_the_questions_file_defaults_to_spec_bench_beside_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv(SPEC_BENCH_ENV, raising=False)
    path = default_questions_path()
    assert path.parts[-4:] == ("shared", "data", "spec_bench", "question.jsonl")
    monkeypatch.setenv(SPEC_BENCH_ENV, str(tmp_path / "mine.jsonl"))
    assert default_questions_path() == tmp_path / "mine.jsonl"


def test_load_questions_takes_the_first_turn(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question_id": 7, "category": "writing", "turns": ["one", "two"]}) + "\n\n")
    assert load_questions(path) == [Prompt(question_id=7, category="writing", text="one")]


def test_a_missing_questions_file_is_named_with_the_fix(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(SPEC_BENCH_ENV, str(tmp_path / "absent.jsonl"))
    assert main(["verify", "--strategy", "greedy"]) == 2
    err = capsys.readouterr().err
    assert "absent.jsonl" in err and SPEC_BENCH_ENV in err


@pytest.mark.parametrize("argv, expected", [
    (["--strategy", "nope"], "unknown strategy 'nope'"),
    (["--strategy", "greedy", "W=3"], "unknown parameter 'W' for 'greedy'"),
    (["--strategy", "greedy", "--limit", "0"], "--limit must be >= 1, got 0"),
])
def test_bad_command_lines_exit_2_and_name_the_problem(argv, expected, capsys):
    assert main(["verify", *argv]) == 2
    assert expected in capsys.readouterr().err


def write_golden(path, **overrides):
    record = {"question_id": 1, "category": "qa", "model": "default", "dtype": "float32", "max_new_tokens": 8,
              "input_ids": [1, 2, 3], "greedy": [4, 5]}
    lines = [record, {**record, "question_id": 2, **overrides}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_check_refuses_settings_that_differ_from_the_golden_file(tmp_path, capsys):
    golden = tmp_path / "golden.jsonl"
    write_golden(golden)
    assert main(["verify", "--strategy", "greedy", "--check", str(golden), "--dtype", "bfloat16"]) == 2
    assert "--dtype bfloat16 differs from the golden file's dtype 'float32'" in capsys.readouterr().err
    assert main(["verify", "--strategy", "greedy", "--check", str(golden), "--questions", str(golden)]) == 2
    assert "drop --questions" in capsys.readouterr().err


def test_a_golden_file_holds_one_setting(tmp_path):
    from decodekit.errors import InputError

    golden = tmp_path / "golden.jsonl"
    write_golden(golden, max_new_tokens=9)
    with pytest.raises(InputError, match=r"golden.jsonl:2 has max_new_tokens=9 but line 1 has 8"):
        load_golden(golden)
    write_golden(golden)
    prompts, settings = load_golden(golden)
    assert settings == {"model": "default", "dtype": "float32", "max_new_tokens": 8}
    assert prompts[0].input_ids == (1, 2, 3) and prompts[0].golden == (4, 5)


def test_thresholds_are_stated_for_every_dtype():
    assert set(NEAR_TIE_MARGIN) == {"float64", "float32", "float16", "bfloat16"}
    assert NEAR_TIE_MARGIN["float64"] < NEAR_TIE_MARGIN["float32"] < NEAR_TIE_MARGIN["float16"] < NEAR_TIE_MARGIN["bfloat16"]


def test_top2_margin_is_greedys_margin_at_that_position():
    model = tiny_model("qwen2")
    prefix = [5, 9, 11, 4]
    logits = model(input_ids=torch.tensor([prefix])).logits[0, -1]  # (V,)
    best, second = logits.topk(2).values.tolist()
    assert top2_margin(model, prefix) == pytest.approx(best - second, abs=1e-9)


def test_judge_classifies_by_the_margin_at_the_first_difference():
    model = tiny_model("llama")
    prompt, greedy = [5, 6, 7], [10, 11, 12, 13]
    output = [10, 11, 40, 41]
    margin = top2_margin(model, prompt + greedy[:2])
    near = judge(model, None, "float64", prompt, greedy, output, threshold=margin * 1.01)
    assert near.status == "near-tie" and near.position == 2 and "near-tie" in near.text
    real = judge(model, None, "float64", prompt, greedy, output, threshold=margin * 0.99)
    assert real.status == "mismatch" and "REAL MISMATCH" in real.text
    assert "differs at new token 2: greedy 12, strategy 40" in real.text
    assert judge(model, None, "float64", prompt, greedy, list(greedy), 1.0).status == "identical"
    early = judge(model, None, "float64", prompt, greedy, greedy[:2], 1.0)
    assert early.status == "mismatch" and "stopped" in early.text


def test_a_model_that_is_neither_default_nor_a_model_folder_is_refused(tmp_path, questions, capsys):
    rc = main(["verify", "--strategy", "greedy", "--questions", str(questions), "--model", str(tmp_path)])
    assert rc == 2
    assert f"--model must be 'default' or a local HuggingFace model folder (with config.json), got {str(tmp_path)!r}" \
        in capsys.readouterr().err


def test_draft_model_flag_matches_the_strategys_needs(questions, capsys, decodekit_register):
    import decodekit

    class NeedsDraft(decodekit.Decoder):
        name = "needs-draft-cli-test"
        capabilities = decodekit.Capabilities(exact=True, needs_draft_model=True)

        def step(self, state):
            return []

    decodekit_register(NeedsDraft)
    assert main(["verify", "--strategy", "needs-draft-cli-test", "--questions", str(questions)]) == 2
    assert "strategy 'needs-draft-cli-test' needs a draft model; pass --draft-model default" in capsys.readouterr().err
    assert main(["verify", "--strategy", "greedy", "--questions", str(questions), "--draft-model", "default"]) == 2
    assert "--draft-model was given but strategy 'greedy' does not use a draft model" in capsys.readouterr().err
