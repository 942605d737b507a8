"""Shared helpers for decodekit's own tests (prompt sets, reference decoding)."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import torch

import decodekit

from decodekit.bench.divergence import top2_margin  # noqa: F401  (re-exported for the real-model tests)
from decodekit.testing.exactness import first_difference  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SPEC_BENCH = Path(os.environ.get("DECODEKIT_SPEC_BENCH", REPO.parent / "shared" / "data" / "spec_bench" / "question.jsonl"))

# The project's own prompts, so the real-model tests run where Spec-Bench is absent.
OWN_PROMPTS = [
    ("writing", "Write a short poem about a lighthouse keeper who befriends a seagull."),
    ("coding", "Write a Python function that returns the n-th Fibonacci number iteratively."),
    ("math", "If a train travels 60 miles per hour for 2.5 hours, how far does it go? Explain."),
    ("qa", "Who wrote the novel 'Pride and Prejudice', and when was it published?"),
    ("summarization", "Summarize: The city council met on Tuesday to discuss the new park. Residents asked for more "
                      "trees, a playground and longer opening hours. The council agreed to plant trees this spring "
                      "and to review the opening hours next month."),
    ("roleplay", "You are a museum guide in a hall of old clocks. Greet a group of school children and tell them "
                 "what they will see."),
    ("reasoning", "Anna is older than Ben, and Ben is older than Carl. Is Carl older than Anna? Explain step by step."),
    ("extraction", "List every date and the event on it: The bridge opened on 3 May 1921, was closed for repairs on "
                   "12 June 1958 and was painted red on 1 August 1990."),
    ("stem", "Why does ice float on liquid water? Answer for a curious twelve-year-old."),
    ("humanities", "What were the main causes of the fall of the Western Roman Empire?"),
    ("translation", "Translate into French: The library opens at nine and closes at six on weekdays."),
    ("math_reasoning", "A shop sells pencils at 3 for 45 cents. How much do 12 pencils cost? Show your working."),
    ("rag", "Using this passage, say what a tide is. Passage: Tides are the regular rise and fall of the sea "
            "surface, caused mostly by the pull of the Moon's gravity and, to a lesser extent, the Sun's."),
]


def questions_file(folder: Path) -> Path:
    """A Spec-Bench-format question file: Spec-Bench's own where it is present, else OWN_PROMPTS written to
    `folder` (question ids 1, 2, ...), so the tests of the CLI's bench and verify run anywhere."""
    if SPEC_BENCH.is_file():
        return SPEC_BENCH
    path = folder / "own_questions.jsonl"
    path.write_text("".join(json.dumps({"question_id": i, "category": cat, "turns": [prompt]}) + "\n"
                            for i, (cat, prompt) in enumerate(OWN_PROMPTS, start=1)))
    return path


def spec_bench_prompts(per_category: int = 1, limit: int | None = None) -> list[tuple[str, str]]:
    """(category, first turn) pairs: the first `per_category` rows of every category, in file order."""
    if not SPEC_BENCH.is_file():
        return OWN_PROMPTS[:limit]
    seen: dict[str, int] = {}
    out = []
    with SPEC_BENCH.open() as f:
        for line in f:
            row = json.loads(line)
            cat = row["category"]
            if seen.get(cat, 0) < per_category:
                seen[cat] = seen.get(cat, 0) + 1
                out.append((cat, row["turns"][0]))
    return out[:limit]


def spread_prompts(count: int) -> list[tuple[str, str]]:
    """`count` prompts taken round-robin over the categories (every category once before any twice)."""
    by_category: dict[str, list[str]] = {}
    for cat, prompt in spec_bench_prompts(per_category=10**6):
        by_category.setdefault(cat, []).append(prompt)
    out: list[tuple[str, str]] = []
    for round_ in range(max((len(v) for v in by_category.values()), default=0)):
        for cat, prompts in by_category.items():
            if round_ < len(prompts) and len(out) < count:
                out.append((cat, prompts[round_]))
    return out


def hf_greedy(model, ids: torch.Tensor, max_new_tokens: int, eos: int | list[int] | None) -> torch.Tensor:
    """model.generate(do_sample=False) with an explicit eos set (an empty list: none)."""
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    kwargs["eos_token_id"] = eos if eos not in (None, []) else None
    if eos in (None, []):
        # with eos_token_id=None generate falls back to nothing when the generation config has none
        model.generation_config.eos_token_id = None
    try:
        with torch.inference_mode():
            return model.generate(ids, **kwargs)
    finally:
        model.generation_config.eos_token_id = 2


class RowByRow(decodekit.Decoder):
    """An exact strategy of the pre-batching contract: it runs its own forward in `step`.

    Drafts the tokens that followed the previous occurrence of the pending token (a 1-gram prompt
    lookup), forwards [pending, *draft] as a chain, keeps the agreeing prefix and the model's next token.
    """

    name = "test-row-by-row"
    description = "TEST: a pre-batching (step-overriding) drafting strategy"
    capabilities = decodekit.Capabilities(exact=True)

    def step(self, state):
        tokens, size = state.tokens, min(3, state.remaining - 1)
        draft: list[int] = []
        for i in range(len(tokens) - 2, -1, -1):
            if size > 0 and tokens[i] == tokens[-1]:
                draft = tokens[i + 1: i + 1 + size]
                break
        start = state.kv.length
        logits = state.forward([state.pending, *draft])  # (T, V)
        choices = state.choose(logits, state.chain(draft)).tolist()  # (T,)
        accepted = 0
        while accepted < len(draft) and draft[accepted] == choices[accepted]:
            accepted += 1
        state.kv.rollback(start + accepted + 1)
        return [*draft[:accepted], choices[accepted]]


def tiny_tokenizer(vocab_size: int = 96):
    """A fast tokenizer for the tiny models: 0 <pad>, 1 <s>, 2 </s>, then 'e', 'f' and strings over 'abcd'
    ('a', ..., 'dd', 'aaa', ...); decoding concatenates, so stop strings span token boundaries."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "e", "f"]
    for n in itertools.count(1):
        words += ["".join(letters) for letters in itertools.product("abcd", repeat=n)]
        if len(words) >= vocab_size:
            break
    tokenizer = Tokenizer(BPE({w: i for i, w in enumerate(words[:vocab_size])}, merges=[]))
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
