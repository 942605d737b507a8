"""What a step costs on a tensor-parallel model, and how much of it is communication.

    torchrun --nproc_per_node 2 examples/tp_step_cost.py [--dtype float32] [--cached 256]
    python examples/tp_step_cost.py            # one process: the same forwards, unsharded

Times forwards of 1, 4, 16 and 64 new tokens after `--cached` tokens, on the default model sharded over
the ranks (or whole, in one process), and, on several ranks, one all-reduce of T x hidden values: a
sharded forward makes two per layer (after attention and after the MLP), so 2 x layers x that time is
the communication inside one forward. Medians of --repeats; rank 0 prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist

import decodekit
from decodekit.core.backend import HFBackend
from decodekit.core.machine import describe_cpu

TOKENS = (1, 4, 16, 64)


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs (ranks start each run together)."""
    times = []
    for _ in range(repeats):
        if dist.is_initialized():
            dist.barrier()
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--cached", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    model, _ = decodekit.models.load_default(args.dtype, tp_size=world if world > 1 else None)
    config = model.config.get_text_config(decoder=True)
    hidden, layers = config.hidden_size, config.num_hidden_layers
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, config.vocab_size, (1, args.cached), generator=generator)  # (1, S)

    rows = []
    backend = HFBackend.for_model(model)  # the model's public forward, as decodekit's loop calls it
    with torch.inference_mode():
        cache = backend.new_cache()
        backend.forward(prefix[0], torch.arange(args.cached), cache, logits_to_keep=1)
        for t in TOKENS:
            ids = torch.randint(0, config.vocab_size, (t,), generator=generator)  # (T,)
            positions = torch.arange(args.cached, args.cached + t)  # (T,)

            def step() -> None:
                backend.forward(ids, positions, cache, logits_to_keep=1)
                backend.crop_cache(cache, args.cached)

            forward = timed(step, args.repeats)
            reduce = None
            if world > 1:
                values = torch.randn(1, t, hidden, dtype=model.dtype)  # (1, T, hidden): one layer's output

                reduce = timed(lambda: dist.all_reduce(values), args.repeats * 3)
            rows.append((t, forward, reduce))
    if rank == 0:
        print(f"default model, {args.dtype}, {world} rank(s) x {torch.get_num_threads()} thread(s), "
              f"{args.cached} cached; cpu: {describe_cpu()}")
        print("\n| tokens | forward ms | x one token |" + (" all-reduce ms | 2 x layers x all-reduce ms |" if world > 1 else ""))
        print("| --- | --- | --- |" + (" --- | --- |" if world > 1 else ""))
        one = rows[0][1]
        for t, forward, reduce in rows:
            line = f"| {t} | {forward * 1e3:.1f} | {forward / one:.2f} |"
            if reduce is not None:
                line += f" {reduce * 1e3:.3f} | {2 * layers * reduce * 1e3:.1f} |"
            print(line)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
