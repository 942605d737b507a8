"""One rank of the default-model check: run by tests/distributed/test_tensor_parallel_default.py under torchrun.

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/tp_default_ranks.py PROMPTS OUT NEW

Loads SmolLM2-135M-Instruct in float32 sharded over every rank (load_default(tp_size=N)), decodes each
prompt of PROMPTS (a JSON list of token-id lists) with every exact strategy (speculative with a draft cut from
a whole copy on every rank), and writes the new tokens to OUT/rank<r>.json (an error is recorded, not fatal).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import decodekit
from decodekit.errors import ModelNotSupportedError
from decodekit.strategies.speculative import truncated_draft

RUNS = {
    "greedy": ("greedy", {}),
    "jacobi": ("jacobi", {}),
    "lookahead-fixed": ("lookahead", dict(W=5, N=4, G=5)),
    "lookahead-planned": ("lookahead", {}),
    "prompt-lookup": ("prompt-lookup", {}),
}
DRAFT_LAYERS = 22  # speculative: a draft of the model's first 22 of 30 layers, whole on every rank


def decode(model, prompt: list[int], strategy: str, params: dict, max_new_tokens: int) -> dict:
    ids = torch.tensor([prompt])
    try:
        out = decodekit.generate(model, ids, strategy, max_new_tokens=max_new_tokens, **params)
    except Exception as exc:  # recorded for the test to judge
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"new": out.sequences[0, len(prompt):].tolist(), "steps": out.stats.steps}


def main(prompts_file: Path, out: Path, max_new_tokens: int) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    rank = dist.get_rank()
    model, _ = decodekit.models.load_default("float32", tp_size=dist.get_world_size())
    whole, _ = decodekit.models.load_default("float32")  # every rank's own whole copy, for the draft
    runs = {**RUNS, "speculative": ("speculative", dict(draft_model=truncated_draft(whole, DRAFT_LAYERS), gamma=4))}
    prompts = json.loads(prompts_file.read_text())
    report = {name: [decode(model, p, strategy, params, max_new_tokens) for p in prompts]
              for name, (strategy, params) in runs.items()}
    try:  # a draft cannot be cut from the target's slices: refused, not a broken model
        truncated_draft(model, DRAFT_LAYERS)
        report["draft-from-slices"] = "built"
    except ModelNotSupportedError as exc:
        report["draft-from-slices"] = str(exc)
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
