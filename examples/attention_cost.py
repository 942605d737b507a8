"""What a packed step's forward costs with transformers' "sdpa" attention and with "decodekit_sdpa".

    .venv/bin/python examples/attention_cost.py [--dtype bfloat16] [--cached 700] [--repeats 15]

The default model (SmolLM2-135M-Instruct: 9 query heads over 3 key-value heads) on the CPU. For each
shape, `rows` rows of `cached` random cached tokens each, then one forward of `tokens` new tokens per row
with decodekit's packed mask (a causal chain per row), as a step of the decode loop runs it. Both
attention implementations run on the same model and cache, alternating in every round, so that drift in
the machine's speed hits them alike; the table gives each one's median and their ratio. With one token
per row both are transformers' own path; with more, "sdpa" copies every cached key and value for each
query head that shares it, and "decodekit_sdpa" does not. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from decodekit.core.backend import GROUPED_SDPA, HFBackend
from decodekit.core.masks import causal_layout, packed_mask, packed_positions
from decodekit.models import load_default

SHAPES = [(1, 1), (1, 12), (2, 1), (2, 6), (4, 4), (8, 1), (8, 4)]
IMPLEMENTATIONS = ("sdpa", GROUPED_SDPA)


def time_shape(backend: HFBackend, rows: int, tokens: int, cached: int, repeats: int) -> dict[str, float]:
    """Median seconds of one packed forward of rows x tokens after `cached` columns, per implementation."""
    generator = torch.Generator().manual_seed(rows * 1000 + tokens)
    cache = backend.new_cache()
    prompt = torch.randint(0, backend.vocab_size, (rows, cached), generator=generator)  # (B, S)
    layouts = [causal_layout(cached)] * rows
    mask = packed_mask(layouts, [0] * rows, 0, backend.dtype)  # (B, 1, S, S)
    backend.forward_rows(prompt, packed_positions(layouts, [0] * rows), cache, mask, logits_to_keep=1)
    step = [causal_layout(tokens)] * rows
    ids = torch.randint(0, backend.vocab_size, (rows, tokens), generator=generator)  # (B, T)
    positions = packed_positions(step, [cached] * rows)  # (B, T)
    step_mask = packed_mask(step, [cached] * rows, cached, backend.dtype)  # (B, 1, T, S + T)
    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for round_ in range(repeats + 2):  # the first two rounds warm up
        for name in IMPLEMENTATIONS if round_ % 2 else reversed(IMPLEMENTATIONS):
            backend.model.set_attn_implementation(name)
            began = time.perf_counter()
            backend.forward_rows(ids, positions, cache, step_mask)
            elapsed = time.perf_counter() - began
            backend.crop_cache(cache, cached)
            if round_ >= 2:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float64"))
    parser.add_argument("--cached", type=int, default=700, help="cached tokens of every row before the step")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per shape (median taken)")
    args = parser.parse_args()
    model, _ = load_default(args.dtype)
    backend = HFBackend.for_model(model)
    print(f"| rows x tokens | sdpa ms | {GROUPED_SDPA} ms | sdpa / {GROUPED_SDPA} |")
    print("| --- | --- | --- | --- |")
    with torch.inference_mode():
        for rows, tokens in SHAPES:
            got = time_shape(backend, rows, tokens, args.cached, args.repeats)
            plain, grouped = got["sdpa"], got[GROUPED_SDPA]
            print(f"| {rows} x {tokens} | {1000 * plain:.1f} | {1000 * grouped:.1f} | {plain / grouped:.2f} |", flush=True)
    print(f"({args.dtype}, {torch.get_num_threads()} threads, {args.cached} cached per row)")


if __name__ == "__main__":
    main()
