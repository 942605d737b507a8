"""What one forward of k new tokens costs on this machine, after a cached context: the curve that
decides whether putting more tokens through a step (lookahead's window and trie) can pay.

    .venv/bin/python examples/forward_cost_curve.py [--dtype float32] [--context 300] [--repeats 8]

The default model (SmolLM2-135M-Instruct) on the CPU. The sizes run in a shuffled order each round so
that drift in the machine's speed hits them alike; the table gives each size's median and its ratio
to a one-token forward. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from decodekit.core.backend import HFBackend
from decodekit.models import load_default

SIZES = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64]


def measure(model, context: int, repeats: int) -> dict[int, float]:
    """Median seconds of a forward of k new tokens over `context` cached ones, for every k in SIZES."""
    rng = random.Random(0)
    backend = HFBackend.for_model(model)
    ids = torch.randint(100, 20000, (context,), generator=torch.Generator().manual_seed(0))  # (context,)
    times: dict[int, list[float]] = {k: [] for k in SIZES}
    with torch.no_grad():
        cache = backend.new_cache()
        backend.forward(ids, torch.arange(context), cache, logits_to_keep=1)
        for _ in range(repeats):
            order = SIZES[:]
            rng.shuffle(order)
            for k in order:
                new = torch.randint(100, 20000, (k,))  # (k,)
                began = time.perf_counter()
                backend.forward(new, torch.arange(context, context + k), cache, logits_to_keep=1)
                times[k].append(time.perf_counter() - began)
                backend.crop_cache(cache, context)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float64"))
    parser.add_argument("--context", type=int, default=300, help="cached tokens before each forward")
    parser.add_argument("--repeats", type=int, default=8, help="rounds over all sizes (median taken)")
    args = parser.parse_args()
    model, _ = load_default(args.dtype)
    medians = measure(model, args.context, args.repeats)
    print(f"| k new tokens | ms ({args.dtype}, {torch.get_num_threads()} threads, {args.context} cached) | x one token |")
    print("| --- | --- | --- |")
    for k, seconds in medians.items():
        print(f"| {k} | {1000 * seconds:.1f} | {seconds / medians[1]:.2f} |")


if __name__ == "__main__":
    main()
