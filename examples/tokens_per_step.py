"""Tokens per forward of strategy configurations, without timing anything.

    .venv/bin/python examples/tokens_per_step.py [--dtype float32] [--per-category 1] [--max-new-tokens 128] \
        lookahead lookahead:W=4,N=3,G=6 ...

Runs each method spec (the `decodekit bench` syntax: NAME or NAME:KEY=VALUE,...) on Spec-Bench first
turns ($DECODEKIT_SPEC_BENCH, else ../shared/data/spec_bench/question.jsonl) with the default model and
prints tokens per forward (new tokens over all forwards, the prefill included, summed over the prompts:
the figure `decodekit bench` reports) and tokens computed per decoding step. In float32 these figures
depend only on the algorithm and the model's argmax, not on the machine or its load, so a grid can be
explored while the CPU is busy; speed still has to be measured with `decodekit bench` on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import time

import decodekit
from decodekit.bench.methods import parse_method
from decodekit.bench.questions import default_questions_path, read_questions, select
from decodekit.errors import DecodekitError
from decodekit.models import chat_ids, load_default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("methods", nargs="+", help="method specs, e.g. lookahead:W=6,N=3,G=8")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float64"))
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    try:  # methods and questions are checked before the model loads
        specs = [parse_method(text) for text in args.methods]
        questions = select(read_questions(default_questions_path()), per_category=args.per_category)
    except DecodekitError as exc:
        parser.error(str(exc))
    for spec in specs:
        if spec.family != "decodekit" or spec.draft is not None:
            parser.error(f"{spec.label!r}: only decodekit strategies without a draft model are counted here")
    model, tokenizer = load_default(args.dtype)
    prompts = [chat_ids(tokenizer, q.turns[0]) for q in questions]
    print(f"| method | tokens/forward | tokens computed/step ({args.dtype}, {len(prompts)} prompts, "
          f"{args.max_new_tokens} new tokens) |")
    print("| --- | --- | --- |")
    for text, spec in zip(args.methods, specs):
        began = time.perf_counter()
        new = forwards = computed = 0
        for ids in prompts:
            stats = decodekit.generate(model, ids, spec.name, max_new_tokens=args.max_new_tokens,
                                       **spec.params).stats
            new, forwards, computed = new + stats.new_tokens, forwards + stats.steps, computed + stats.tokens_computed
        steps = max(forwards - len(prompts), 1)
        print(f"| {text} | {new / forwards:.3f} | {computed / steps:.1f} |", flush=True)
        print(f"  ({time.perf_counter() - began:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
