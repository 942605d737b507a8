"""How many tokens per forward can copied candidates give at most? Replays greedy outputs offline.

    .venv/bin/python examples/candidate_ceiling.py [--dtype bfloat16] [--per-category 5] [--max-new-tokens 128]

Greedy-decodes Spec-Bench first turns ($DECODEKIT_SPEC_BENCH, else ../shared/data/spec_bench/question.jsonl)
with the default model once, then replays each output step by step without the model: a step verifies
the candidates a source proposes from the text committed so far, accepts the longest prefix that the
greedy output continues with, plus the bonus token, exactly as lookahead's verification would. So the
figures are the tokens per forward of lookahead's verification branch on its own (no window), for:

- the n-gram pool fed with the prompt's and the output's n-grams (decodekit's NgramPool, C=0);
- context candidates (decodekit's ContextIndex) alone and together with the pool;
- an upper bound for any copying drafter: the longest continuation that occurs anywhere earlier in
  the text, as if an oracle picked the best candidate every step.

Forwards count the prefill, as `decodekit bench` does (tokens/forward = new tokens / forwards).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Callable, Sequence

import decodekit
from decodekit.bench.questions import default_questions_path, read_questions, select
from decodekit.models import chat_ids, load_default
from decodekit.strategies.lookahead import CONTEXT, LookaheadParams, choose_candidates
from decodekit.strategies.ngram_pool import ContextIndex, NgramPool, Trie

ORACLE_LENGTH = 16
Source = Callable[[list[int]], Callable[[list[int], int], list[tuple[int, ...]]]]


def pool_source(n: int, g: int) -> Source:
    """The n-gram pool alone (C=0), fed with the prompt's and the output's n-grams."""
    return context_source(0, 1, (n, g), g)


def context_source(c: int, length: int, pool: tuple[int, int] | None = None, g: int | None = None) -> Source:
    """Context candidates (C=c, L=length), then the pool's (N, G) as lookahead's verification picks them."""
    n, pool_g = pool if pool else (2, 0)  # no pool: it keeps nothing (capacity 0), so N plays no part
    params = LookaheadParams(C=c, L=length, N=n, G=g if g is not None else c + pool_g)

    def start(prompt: list[int]):
        index = ContextIndex(max_context=CONTEXT)
        ngrams = NgramPool(n=n, capacity=pool_g)
        ngrams.add_sequence(prompt)

        def propose(text: list[int], room: int) -> list[tuple[int, ...]]:
            ngrams.add_sequence(text, first_end=len(index.tokens) or len(prompt))
            index.extend(text[len(index.tokens):])
            return choose_candidates(params, index, ngrams, text[-1], room)
        return propose
    return start


def longest_copy(text: Sequence[int], future: Sequence[int], length: int) -> int:
    """Longest prefix of `future` (at most `length`) that occurs somewhere in `text`."""
    haystack = "," + ",".join(map(str, text)) + ","
    best = 0
    while best < min(length, len(future)) and "," + ",".join(map(str, future[:best + 1])) + "," in haystack:
        best += 1
    return best


def replay(source: Source | None, prompt: list[int], output: list[int]) -> tuple[int, int]:
    """(forwards, draft tokens computed) to produce `output` when `source` proposes the candidates.

    source None: the oracle, which takes the longest copy of the future found anywhere earlier.
    """
    propose = source(prompt) if source is not None else None
    done, forwards, computed = 1, 1, 0  # the prefill commits the first token
    while done < len(output):
        text, future, room = prompt + output[:done], output[done:], len(output) - done - 1
        if propose is None:
            accepted = longest_copy(text, future[:room], ORACLE_LENGTH)
            computed += accepted
        else:
            trie = Trie.build(propose(text, room))
            node, accepted = -1, 0
            while accepted < len(future) and (node := trie.child(node, future[accepted])) is not None:
                accepted += 1
            computed += len(trie)
        done += accepted + 1
        forwards += 1
    return forwards, computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--per-category", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    model, tokenizer = load_default(args.dtype)
    questions = select(read_questions(default_questions_path()), per_category=args.per_category)
    runs = []
    for number, question in enumerate(questions, 1):
        ids = chat_ids(tokenizer, question.turns[0])
        out = decodekit.generate(model, ids, "greedy", max_new_tokens=args.max_new_tokens)
        runs.append((question.category, ids[0].tolist(), out.sequences[0, ids.shape[1]:].tolist()))
        print(f"\rgreedy outputs: {number}/{len(questions)}", end="", flush=True)
    print()
    sources: dict[str, Source | None] = {
        "pool N=5 G=4 (C=0)": pool_source(5, 4),
        "pool N=5 G=15 (C=0)": pool_source(5, 15),
        "context C=2 L=8": context_source(2, 8),
        "context C=2 L=8 + pool N=5, G=4 in all (the defaults)": context_source(2, 8, (5, 4), 4),
        "context C=16 L=16 + pool N=5 G=16": context_source(16, 16, (5, 16)),
        f"oracle: the longest copy from anywhere earlier, up to {ORACLE_LENGTH} tokens": None,
    }
    print(f"| candidate source | tokens/forward | draft tokens/step | per category ({args.dtype}, "
          f"{len(runs)} prompts, {args.max_new_tokens} new tokens) |")
    print("| --- | --- | --- | --- |")
    for label, source in sources.items():
        totals, by_category = [0, 0, 0], defaultdict(lambda: [0, 0])
        for category, prompt, output in runs:
            forwards, computed = replay(source, prompt, output)
            totals[0] += len(output)
            totals[1] += forwards
            totals[2] += computed
            by_category[category][0] += len(output)
            by_category[category][1] += forwards
        steps = totals[1] - len(runs)
        cats = ", ".join(f"{c} {t / f:.2f}" for c, (t, f) in by_category.items())
        drafts = f"{totals[2] / max(steps, 1):.1f}" if source is not None else "-"
        print(f"| {label} | {totals[0] / totals[1]:.2f} | {drafts} | {cats} |")


if __name__ == "__main__":
    main()
