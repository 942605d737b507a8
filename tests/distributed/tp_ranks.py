"""One rank of the tensor-parallel checks: run by tests/distributed/test_tensor_parallel.py under torchrun.

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/tp_ranks.py MODELS OUT

MODELS holds `target` and `draft` (tiny model folders) and `cases.json` (the prompts and settings); each
rank loads the target sharded over every rank (decodekit's load_pretrained with tp_size), decodes every case
with every exact strategy (and a step-contract test strategy, and lookahead through model.generate's
custom_generate), samples with seeded generators, then makes the ranks disagree on purpose three
ways, and writes what it got to OUT/rank<r>.json. A case that raises is recorded (type and message), not
fatal, so that one run reports everything; the test decides what is right.
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
from decodekit.core.backend import load_model
from decodekit.plugins.manager import get_registry

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tests.helpers
from tests.helpers import RowByRow  # noqa: E402  (a strategy of the pre-batching contract: its own forward)

DTYPE = torch.float64


def outcome(call):
    """{"sequences": ...} or {"error": type, "message": ...}: what a generate call gave on this rank
    (a GenerationOutput, or model.generate's sequences tensor)."""
    try:
        out = call()
    except Exception as exc:  # recorded for the test to judge
        return {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(out, torch.Tensor):
        return {"sequences": out.tolist()}
    return {"sequences": out.sequences.tolist(), "steps": out.stats.steps}


def exact_runs(model, draft, sharded_draft):
    """Every exact strategy (name, parameters): lookahead fixed and planned, speculative with a draft every
    rank holds whole and with a sharded one, the prompt-lookup plugin (planned)."""
    return {
        "greedy": ("greedy", {}),
        "jacobi": ("jacobi", {}),
        "lookahead-fixed": ("lookahead", dict(W=4, N=4, G=4)),
        "lookahead-planned": ("lookahead", {}),
        "speculative-whole-draft": ("speculative", dict(draft_model=draft, gamma=3)),
        "speculative-sharded-draft": ("speculative", dict(draft_model=sharded_draft, gamma=3)),
        "prompt-lookup": ("prompt-lookup", {}),
        "row-by-row": (RowByRow.name, {}),
    }


def decode_exact(model, draft, sharded_draft, cases):
    results = {}
    for case_name, case in cases.items():
        ids, mask = torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"])
        for run_name, (strategy, params) in exact_runs(model, draft, sharded_draft).items():
            results[f"{case_name}/{run_name}"] = outcome(lambda: decodekit.generate(
                model, ids, strategy, attention_mask=mask, **case["settings"], **params))
        results[f"{case_name}/hf-generate-lookahead"] = outcome(lambda: model.generate(
            ids, attention_mask=mask, do_sample=False, custom_generate=decodekit.hf_generate, strategy="lookahead",
            W=4, N=4, G=4, **case["settings"]))
    return results


def decode_sampling(model, draft, cases):
    """do_sample with a generator seeded alike on every rank, and with none (an OS seed: rank 0's)."""
    case = cases["batch"]
    ids, mask = torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"])
    settings = dict(max_new_tokens=16, do_sample=True, top_k=0, eos_token_id=None)
    return {
        "greedy-seeded": outcome(lambda: decodekit.generate(model, ids, "greedy", attention_mask=mask,
                                                            generator=torch.Generator().manual_seed(7), **settings)),
        "speculative-seeded": outcome(lambda: decodekit.generate(model, ids, "speculative", attention_mask=mask,
                                                                 draft_model=draft, gamma=3,
                                                                 generator=torch.Generator().manual_seed(7),
                                                                 **settings)),
        "greedy-os-seed": outcome(lambda: decodekit.generate(model, ids, "greedy", attention_mask=mask, **settings)),
    }


class RankBias:
    """A logits processor that, on one rank only and from `length` tokens on, forces the token after the best:
    the ranks then commit different tokens (what a rank-dependent setting would do)."""

    def __init__(self, rank: int, length: int):
        self.rank, self.length = rank, length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if dist.get_rank() != self.rank or input_ids.shape[1] < self.length:
            return scores
        forced = (scores.argmax(-1) + 1) % scores.shape[-1]  # (1,)
        scores = scores.clone()
        scores[0, forced] = scores.max() + 100.0
        return scores


def decode_disagreeing(model, cases):
    """Three ways for the ranks to part, each of which must raise on every rank (not hang)."""
    case = cases["batch"]
    ids, mask = torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"])
    rank = dist.get_rank()
    settings = dict(max_new_tokens=12, eos_token_id=None)
    prompt = len(case["input_ids"][0])
    other_prompt = ids.clone()
    other_prompt[1, -1] = (other_prompt[1, -1] + rank) % 12  # row 1's last prompt token differs on rank 1
    return {
        "processor": outcome(lambda: decodekit.generate(model, ids, "lookahead", W=3, N=3, G=3, attention_mask=mask,
                                                        logits_processor=[RankBias(1, prompt + 4)], **settings)),
        "prompt": outcome(lambda: decodekit.generate(model, other_prompt, "greedy", attention_mask=mask, **settings)),
        "generator": outcome(lambda: decodekit.generate(model, ids, "greedy", attention_mask=mask, do_sample=True,
                                                        generator=torch.Generator().manual_seed(rank), **settings)),
    }


def main(models: Path, out: Path) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    cases = json.loads((models / "cases.json").read_text())
    get_registry().register(RowByRow)
    model = load_model(models / "target", DTYPE, tp_size=world)
    sharded_draft = load_model(models / "draft", DTYPE, tp_size=world)
    draft = load_model(models / "draft", DTYPE)
    report = {
        "rank": rank, "world": world,
        "sharded": type(next(model.parameters())).__name__,
        "exact": decode_exact(model, draft, sharded_draft, cases),
        "sampling": decode_sampling(model, draft, cases),
        "disagree": decode_disagreeing(model, cases),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
