"""Tokens per step and speed against greedy for Jacobi and speculative decoding on the default model.

    OMP_NUM_THREADS=1 .venv/bin/python examples/bench_jacobi_speculative.py [--prompts 10] [--max-new-tokens 64]

SmolLM2-135M-Instruct in float32 on the CPU. Prompts: the first turns of Spec-Bench's question.jsonl
($DECODEKIT_SPEC_BENCH, else ../shared/data/spec_bench/question.jsonl), taken round-robin over the
categories as `decodekit bench` and the real-model tests take them; else ten built-in prompts.
Every configuration runs on every prompt, interleaved prompt by prompt so that load on a shared
machine hits them alike; each output is checked against greedy's. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

import decodekit
from decodekit.bench.questions import default_questions_path, read_questions, select
from decodekit.strategies.speculative import int8_draft, truncated_draft

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


def prompts(count: int) -> tuple[list[str], str]:
    """`count` first turns, round-robin over the categories (the bench's reader and order)."""
    path = default_questions_path()
    if not path.is_file():
        return FALLBACK_PROMPTS[:count], "built-in prompts (no Spec-Bench question.jsonl found)"
    return [q.turns[0] for q in select(read_questions(path))[:count]], str(path)


def configurations(model):
    truncated = truncated_draft(model, layers=22)
    int8 = int8_draft(model)
    return {
        "greedy": ("greedy", {}),
        "jacobi block_size=8 max_iterations=8": ("jacobi", {"block_size": 8, "max_iterations": 8}),
        "jacobi block_size=4 max_iterations=1": ("jacobi", {"block_size": 4, "max_iterations": 1}),
        "speculative gamma=4, draft = first 22 of 30 layers": ("speculative", {"gamma": 4, "draft_model": truncated}),
        "speculative gamma=3, draft = int8 copy": ("speculative", {"gamma": 3, "draft_model": int8}),
        "speculative gamma=5, draft = int8 copy": ("speculative", {"gamma": 5, "draft_model": int8}),
        "speculative adaptive gamma=3..8, draft = int8 copy": (
            "speculative", {"gamma": 3, "adaptive": True, "max_gamma": 8, "draft_model": int8}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    model, tokenizer = decodekit.models.load_default("float32")
    texts, source = prompts(args.prompts)
    configs = configurations(model)
    totals = {name: {"seconds": 0.0, "new": 0, "steps": 0, "same": 0} for name in configs}
    decodekit.generate(model, decodekit.models.chat_ids(tokenizer, "Hi"), "greedy", max_new_tokens=2)  # warm-up
    for text in texts:
        ids = decodekit.models.chat_ids(tokenizer, text)
        reference = None
        for name, (strategy, params) in configs.items():
            out = decodekit.generate(model, ids, strategy, max_new_tokens=args.max_new_tokens, **params)
            reference = out.sequences if reference is None else reference
            total = totals[name]
            total["seconds"] += out.stats.seconds
            total["new"] += out.stats.new_tokens
            total["steps"] += out.stats.steps
            total["same"] += bool(torch.equal(out.sequences, reference))

    base = totals["greedy"]["seconds"]
    print(f"SmolLM2-135M-Instruct float32, {len(texts)} prompts from {source}, max_new_tokens={args.max_new_tokens}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, "
          f"{os.cpu_count()} CPUs visible, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| configuration | tokens/step | tokens/s | speed vs greedy | equal to greedy |")
    print("|---|---|---|---|---|")
    for name, t in totals.items():
        print(f"| {name} | {t['new'] / t['steps']:.2f} | {t['new'] / t['seconds']:.1f} | "
              f"{base / t['seconds']:.2f}x | {t['same']}/{len(texts)} |")
    print("\ntokens/step: new tokens / target forward passes, the prefill included (greedy: 1.00).")


if __name__ == "__main__":
    main()
