import json

import pytest

from decodekit.bench.questions import (
    ENV_QUESTIONS,
    Question,
    QuestionFileError,
    categories_of,
    default_questions_path,
    read_questions,
    select,
)
from decodekit.errors import InputError


def _line(qid, category, turns):
    return json.dumps({"question_id": qid, "category": category, "turns": turns})


def _write(tmp_path, lines):
    path = tmp_path / "question.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_questions_in_order_and_skips_blank_lines(tmp_path):
    path = _write(tmp_path, [_line(1, "writing", ["a", "b"]), "", _line("q2", "qa", ["c"])])
    assert read_questions(path) == [Question(question_id=1, category="writing", turns=("a", "b")),
                                    Question(question_id="q2", category="qa", turns=("c",))]


@pytest.mark.parametrize("bad, says", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    (json.dumps({"question_id": 3, "turns": ["x"]}), "missing field(s) category"),
    (json.dumps({"question_id": 3, "category": "qa", "turns": "x"}), "turns must be a non-empty list"),
    (json.dumps({"question_id": 3, "category": "qa", "turns": []}), "turns must be a non-empty list"),
    (json.dumps({"question_id": 3, "category": "", "turns": ["x"]}), "category must be a non-empty string"),
    (json.dumps({"question_id": True, "category": "qa", "turns": ["x"]}), "question_id must be"),
])
def test_a_bad_line_names_the_file_and_line_number(tmp_path, bad, says):
    path = _write(tmp_path, [_line(1, "qa", ["fine"]), "", bad, _line(4, "qa", ["fine"])])
    with pytest.raises(QuestionFileError) as info:
        read_questions(path)
    assert f"{path}:3:" in str(info.value)
    assert says in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(QuestionFileError, match="does not exist.*--questions"):
        read_questions(tmp_path / "nope.jsonl")
    with pytest.raises(QuestionFileError, match="holds no questions"):
        read_questions(_write(tmp_path, [""]))


def test_default_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_QUESTIONS, raising=False)
    assert default_questions_path().parts[-4:] == ("shared", "data", "spec_bench", "question.jsonl")
    monkeypatch.setenv(ENV_QUESTIONS, str(tmp_path / "mine.jsonl"))
    assert default_questions_path() == tmp_path / "mine.jsonl"


def _rows():
    return [Question(question_id=i, category=c, turns=["t"]) for i, c in
            enumerate(["a", "a", "a", "b", "b", "c"])]


def test_select_is_round_robin_over_categories():
    chosen = select(_rows(), per_category=2)
    assert [(q.category, q.question_id) for q in chosen] == [("a", 0), ("b", 3), ("c", 5), ("a", 1), ("b", 4)]
    assert [q.question_id for q in select(_rows(), categories=["c", "b"])] == [5, 3, 4]
    assert categories_of(_rows()) == ["a", "b", "c"]


def test_select_rejects_unknown_categories_and_bad_counts():
    with pytest.raises(InputError, match=r"unknown 'zz'; the file has a, b, c"):
        select(_rows(), categories=["zz"])
    with pytest.raises(InputError, match="--per-category must be an integer >= 1, got 0"):
        select(_rows(), per_category=0)
