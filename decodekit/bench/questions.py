"""Spec-Bench questions: reading the JSONL prompt file and choosing which prompts to run.

A line is one JSON object with `question_id`, `category` and `turns` (a list of user messages).
A malformed line is an error that names the file and the line number; nothing is skipped silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import attrs

from decodekit.errors import InputError

ENV_QUESTIONS = "DECODEKIT_SPEC_BENCH"
# The project's own copy lives beside the repository, not in it: ../shared/data/spec_bench/question.jsonl
DEFAULT_RELATIVE = Path("..") / "shared" / "data" / "spec_bench" / "question.jsonl"


class QuestionFileError(InputError):
    """A Spec-Bench JSONL file is missing or has a line that is not a question."""


@attrs.frozen(kw_only=True)
class Question:
    """One Spec-Bench row: its id, category and the user turns (MT-Bench rows have two)."""

    question_id: int | str
    category: str
    turns: tuple[str, ...] = attrs.field(converter=tuple)


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_questions_path() -> Path:
    """DECODEKIT_SPEC_BENCH if set, else ../shared/data/spec_bench/question.jsonl from the repository root."""
    env = os.environ.get(ENV_QUESTIONS)
    if env:
        return Path(env)
    return (_repo_root() / DEFAULT_RELATIVE).resolve()


def _parse_line(text: str, path: Path, number: int) -> Question:
    where = f"{path}:{number}"
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QuestionFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise QuestionFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [key for key in ("question_id", "category", "turns") if key not in row]
    if missing:
        raise QuestionFileError(f"{where}: missing field(s) {', '.join(missing)}; a Spec-Bench line has "
                                f"question_id, category and turns")
    qid, category, turns = row["question_id"], row["category"], row["turns"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)):
        raise QuestionFileError(f"{where}: question_id must be an integer or a string, got {qid!r}")
    if not isinstance(category, str) or not category:
        raise QuestionFileError(f"{where}: category must be a non-empty string, got {category!r}")
    if (not isinstance(turns, list) or not turns
            or not all(isinstance(t, str) and t for t in turns)):
        raise QuestionFileError(f"{where}: turns must be a non-empty list of non-empty strings, got {turns!r:.80}")
    return Question(question_id=qid, category=category, turns=turns)


def read_questions(path: str | os.PathLike) -> list[Question]:
    """Every question of a Spec-Bench-format JSONL file, in file order (blank lines are allowed)."""
    path = Path(path)
    if not path.is_file():
        raise QuestionFileError(f"question file {str(path)!r} does not exist; pass --questions FILE or set "
                                f"{ENV_QUESTIONS}")
    questions = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                questions.append(_parse_line(line, path, number))
    if not questions:
        raise QuestionFileError(f"{path}: holds no questions")
    return questions


def categories_of(questions: Iterable[Question]) -> list[str]:
    """Categories in order of first appearance."""
    return list(dict.fromkeys(q.category for q in questions))


def select(questions: Sequence[Question], categories: Sequence[str] | None = None,
           per_category: int | None = None) -> list[Question]:
    """The first `per_category` questions of each chosen category (all when None), in round-robin order."""
    known = categories_of(questions)
    if categories:
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise InputError(f"--categories: unknown {', '.join(map(repr, unknown))}; the file has "
                             f"{', '.join(known)}")
        wanted = list(dict.fromkeys(categories))
    else:
        wanted = known
    if per_category is not None and (isinstance(per_category, bool) or per_category < 1):
        raise InputError(f"--per-category must be an integer >= 1, got {per_category!r}")
    by_category = {c: [q for q in questions if q.category == c] for c in wanted}
    depth = max(len(rows) for rows in by_category.values())
    if per_category is not None:
        depth = min(depth, per_category)
    # Round robin: every category's first question, then every category's second, ...; a run cut
    # short by a time limit still covers all categories.
    return [rows[k] for k in range(depth) for rows in by_category.values() if k < len(rows)]
