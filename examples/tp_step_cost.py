"""What a step costs on a tensor-parallel model, and how much of it is communication.

    torchrun --nproc_per_node 2 examples/tp_step_cost.py [--dtype float32] [--cached 256]
    OMP_NUM_THREADS=1 python examples/tp_step_cost.py     # one process: the same forwards, unsharded

Times forwards of 1 to 128 new tokens after `--cached` tokens, on the default model sharded over
the ranks (or whole, in one process). On several ranks it also profiles one forward of each size
(torch.profiler) and reports the all-reduces transformers' tensor parallelism made inside it, with the
time spent in them, and times two collectives of what lookahead parallelism would exchange instead
(docs/scaling.md): an all_gather of T token ids, and a broadcast of the keys and values of 4 accepted
tokens. Medians of --repeats; rank 0 prints markdown tables.
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

TOKENS = (1, 4, 8, 16, 32, 64, 128)


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


def collectives(step, runs: int = 3) -> tuple[float, float]:
    """(all-reduces per call of `step`, milliseconds spent in them per call), from torch.profiler: the
    outermost all-reduce event (the c10d op wraps gloo's), so none is counted twice."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            step()
    found = [e for e in prof.key_averages() if "allreduce" in e.key.lower().replace("_", "")]
    if not found:
        return 0.0, 0.0
    outer = max(found, key=lambda e: e.cpu_time_total)
    return outer.count / runs, outer.cpu_time_total / 1e3 / runs


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
    layers = config.num_hidden_layers
    kv_width = config.num_key_value_heads * (getattr(config, "head_dim", None)
                                             or config.hidden_size // config.num_attention_heads)
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
            row = {"tokens": t, "forward": forward * 1e3}
            if world > 1:
                row["reduces"], row["reduce_ms"] = collectives(step)
                gathered = [torch.empty(t, dtype=torch.long) for _ in range(world)]  # (T,) per rank
                row["gather_ms"] = timed(lambda: dist.all_gather(gathered, ids), args.repeats * 3) * 1e3
            rows.append(row)
        accepted = 4  # the keys and values of 4 accepted tokens (N = 5), every layer
        kv = torch.randn(2, layers, accepted, kv_width, dtype=model.dtype)  # (2, layers, 4, kv heads x head dim)
        kv_ms = timed(lambda: dist.broadcast(kv, 0), args.repeats * 3) * 1e3 if world > 1 else None
    if rank == 0:
        print(f"default model, {args.dtype}, {world} rank(s) x {torch.get_num_threads()} thread(s), "
              f"{args.cached} cached; cpu: {describe_cpu()}")
        sharded = world > 1
        print("\n| tokens | forward ms | x one token |"
              + (" all-reduces in it | ms in them | all_gather of the T ids, ms |" if sharded else ""))
        print("| --- | --- | --- |" + (" --- | --- | --- |" if sharded else ""))
        one = rows[0]["forward"]
        for row in rows:
            line = f"| {row['tokens']} | {row['forward']:.1f} | {row['forward'] / one:.2f} |"
            if sharded:
                line += f" {row['reduces']:.0f} | {row['reduce_ms']:.1f} | {row['gather_ms']:.3f} |"
            print(line)
        if kv_ms is not None:
            print(f"\nbroadcast of {accepted} accepted tokens' keys and values ({kv.numel()} values, "
                  f"{kv.numel() * kv.element_size() / 1024:.0f} KiB): {kv_ms:.3f} ms")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
