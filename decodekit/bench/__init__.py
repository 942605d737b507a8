"""The benchmark harness behind `decodekit bench`: Spec-Bench prompts, every method side by side.

    from decodekit.bench import run_bench
    doc = run_bench(model, tokenizer=tokenizer, questions=questions, methods=["hf-greedy", "greedy"])

See docs/benchmarks.md for what each figure means and how to reproduce a run.
"""

from decodekit.bench.api import load_model, plan_methods, run_bench
from decodekit.bench.methods import MethodSpec, default_method_texts, parse_method, parse_methods
from decodekit.bench.questions import Question, QuestionFileError, default_questions_path, read_questions, select
from decodekit.bench.results import SCHEMA, check_document
from decodekit.bench.runner import Prompt

__all__ = [
    "SCHEMA",
    "MethodSpec",
    "Prompt",
    "Question",
    "QuestionFileError",
    "check_document",
    "default_method_texts",
    "default_questions_path",
    "load_model",
    "parse_method",
    "parse_methods",
    "plan_methods",
    "read_questions",
    "run_bench",
    "select",
]
