"""Real model: Jacobi and greedy-mode speculative decoding equal greedy on 10 Spec-Bench prompts.

SmolLM2-135M-Instruct in float32, 64 new tokens per prompt. Prompts come from Spec-Bench's
question.jsonl: $DECODEKIT_SPEC_BENCH, else ../shared/data/spec_bench/question.jsonl relative to the
repository root, else the ten prompts below (one or two per Spec-Bench category). The draft for
speculative decoding is the target's own first layers (truncated_draft), so no second model is needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import decodekit
from decodekit.strategies.speculative import truncated_draft

pytestmark = pytest.mark.realmodel

ROOT = Path(__file__).resolve().parents[2]
MAX_NEW_TOKENS = 64
FALLBACK_PROMPTS = [
    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences.",
    "Write a short Python function that checks whether a string is a palindrome, and explain it.",
    "Translate into English: Der schnelle braune Fuchs springt über den faulen Hund.",
    "Summarize in two sentences: The city council met on Tuesday to discuss the new budget. After hours "
    "of debate, they approved funding for road repairs and a new library, but postponed the park plan.",
    "Who wrote the novel Pride and Prejudice, and when was it published?",
    "What is the capital of Australia, and why was it chosen?",
    "If a train travels 60 miles per hour for 2.5 hours, how far does it go? Explain step by step.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Using the passage, answer: The Nile is about 6,650 km long and flows north into the Mediterranean. "
    "Which sea does the Nile flow into?",
    "Explain in three sentences why the sky is blue.",
]


def spec_bench_prompts(count: int = 10) -> list[str]:
    """`count` first-turn prompts spread evenly over question.jsonl, or the fallback prompts."""
    path = Path(os.environ.get("DECODEKIT_SPEC_BENCH") or ROOT / "../shared/data/spec_bench/question.jsonl")
    if not path.is_file():
        return FALLBACK_PROMPTS[:count]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    turns = [row["turns"][0] for row in rows if row.get("turns")]
    stride = max(1, len(turns) // count)
    return turns[::stride][:count]


@pytest.fixture(scope="module")
def default_model():
    try:
        return decodekit.models.load_default("float32")
    except decodekit.models.ModelNotInstalledError as exc:  # pragma: no cover - environment without the wheel
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def greedy_outputs(default_model):
    model, tokenizer = default_model
    out = []
    for prompt in spec_bench_prompts():
        ids = decodekit.models.chat_ids(tokenizer, prompt)
        out.append((ids, decodekit.generate(model, ids, "greedy", max_new_tokens=MAX_NEW_TOKENS).sequences))
    return out


def near_tie(model, expected: torch.Tensor, got: torch.Tensor, prompt_length: int) -> str:
    """Where the outputs first differ, the margin between greedy's top-2 logits there (a near-tie or a bug?)."""
    width = min(expected.shape[1], got.shape[1])
    differ = (expected[0, :width] != got[0, :width]).nonzero()
    if differ.numel() == 0:
        return f"lengths differ: {expected.shape[1]} vs {got.shape[1]}"
    at = int(differ[0, 0])
    with torch.inference_mode():
        logits = model(expected[:, :at]).logits[0, -1]  # (V,)
    top = logits.topk(2).values
    return f"first difference at new token {at - prompt_length}: top-2 logit margin {float(top[0] - top[1]):.3g}"


@pytest.mark.parametrize("strategy, params", [
    ("jacobi", {"block_size": 8, "max_iterations": 8}),
    ("speculative", {"gamma": 4, "draft_layers": 22}),
])
def test_equals_greedy_on_spec_bench(default_model, greedy_outputs, strategy, params):
    model, _ = default_model
    params = dict(params)
    if "draft_layers" in params:
        params["draft_model"] = truncated_draft(model, layers=params.pop("draft_layers"))
    for ids, expected in greedy_outputs:
        got = decodekit.generate(model, ids, strategy, max_new_tokens=MAX_NEW_TOKENS, **params).sequences
        assert torch.equal(got, expected), near_tie(model, expected, got, ids.shape[1])
