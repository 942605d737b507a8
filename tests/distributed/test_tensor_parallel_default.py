"""The default model (SmolLM2-135M-Instruct, float32) sharded over 2 ranks under torchrun, gloo on the CPU.

Its 9 attention heads and 3 key-value heads do not split over 2 ranks: its attention stays whole on every
rank and its MLPs are sharded (test_tensor_parallel.py). Every exact strategy (speculative with a draft cut
from a whole copy on every rank) gives single-process HF greedy's tokens on every rank; a draft cut from the
target's slices is refused. Slow for a test (about a minute on 2 busy CPU cores): selected by `-m distributed`
and `-m realmodel`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import decodekit
from tests.distributed.test_tensor_parallel import launch, pytestmark as _distributed

pytestmark = [*_distributed, pytest.mark.realmodel]

RANKS = 2
SCRIPT = Path(__file__).with_name("tp_default_ranks.py")
MAX_NEW_TOKENS = 24
PROMPTS = ["Repeat this list twice: apples, pears, plums, figs."]  # repeats: lookahead's drafts are accepted


def test_every_exact_strategy_on_the_sharded_default_model_equals_hf_greedy_on_every_rank(tmp_path):
    model, tokenizer = decodekit.models.load_default("float32")
    prompts = [decodekit.models.chat_ids(tokenizer, p)[0].tolist() for p in PROMPTS]
    with torch.inference_mode():
        expected = [model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=MAX_NEW_TOKENS)[0, len(p):].tolist()
                    for p in prompts]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / "out"
    out.mkdir()
    launch(SCRIPT, RANKS, [str(tmp_path / "prompts.json"), str(out), str(MAX_NEW_TOKENS)],
           decodekit.models.cache_dir())
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(RANKS)]
    for report in reports:
        assert report.pop("draft-from-slices").startswith("truncated_draft needs a model every rank holds whole")
        assert set(report) == {"greedy", "jacobi", "lookahead-fixed", "lookahead-planned", "prompt-lookup", "speculative"}
        for run, results in report.items():
            for i, got in enumerate(results):
                assert "error" not in got, f"{run}, prompt {i}: {got}"
                assert got["new"] == expected[i], f"{run}, prompt {i}"
    assert reports[0]["lookahead-fixed"][0]["steps"] < reports[0]["greedy"][0]["steps"]  # drafts were accepted
