"""What one forward of k new tokens costs on this machine, after a cached context: the curve that
decides whether putting more tokens through a step (lookahead's window and trie) can pay.

    .venv/bin/python examples/forward_cost_curve.py [--dtype float32] [--context 300] [--repeats 8]

The default model (SmolLM2-135M-Instruct) on the CPU, timed by decodekit's own measurement
(decodekit.core.costmodel.measure, what `decodekit calibrate` and the step planner use) but with more
sizes and repeats and no time budget: the sizes run in a shuffled order each round so that drift in the
machine's speed hits them alike; the table gives each size's median and its ratio to a one-token
forward. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import math

import torch

from decodekit.core.costmodel import measure
from decodekit.models import load_default

SIZES = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float64"))
    parser.add_argument("--context", type=int, default=300, help="cached tokens before each forward")
    parser.add_argument("--repeats", type=int, default=8, help="rounds over all sizes (median taken)")
    args = parser.parse_args()
    model, _ = load_default(args.dtype)
    cost = measure(model, cached=args.context, tokens=SIZES, repeats=args.repeats, budget_s=math.inf)
    one = cost.seconds(1, args.context)
    print(f"| k new tokens | ms ({args.dtype}, {torch.get_num_threads()} threads, {args.context} cached) | x one token |")
    print("| --- | --- | --- |")
    for k, seconds in cost.points:
        print(f"| {k} | {1000 * seconds:.1f} | {seconds / one:.2f} |")


if __name__ == "__main__":
    main()
