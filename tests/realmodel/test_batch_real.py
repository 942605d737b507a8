"""Real model, float32: every row of a left-padded batch decodes to exactly its single-row greedy output.

Eight Spec-Bench prompts (one per category, the project's own prompts where Spec-Bench is absent),
chat-templated, of different lengths, left-padded into one batch. Each row of decodekit's batched
greedy and batched planned lookahead (no W/N/G: the step planner, over the packed forward's cost)
must equal both decodekit's greedy on that row alone and HF model.generate(do_sample=False) on that
row alone. A difference is reported with the single-row greedy top-2 logit margin where it starts
(a float32 near-tie shows as a margin of ~1e-5), never tolerated.
"""

from __future__ import annotations

import pytest
import torch

import decodekit
from tests.helpers import first_difference, spread_prompts, top2_margin

pytestmark = pytest.mark.realmodel
ROWS = 8
MAX_NEW_TOKENS = 56


@pytest.fixture(scope="module")
def batch(default_model_fp32):
    """(prompts as (1, T) ids, the left-padded batch ids (B, W), its attention mask (B, W), the pad id)."""
    model, tokenizer = default_model_fp32
    prompts = [decodekit.models.chat_ids(tokenizer, text) for _, text in spread_prompts(ROWS)]
    assert len(prompts) == ROWS
    lengths = [p.shape[1] for p in prompts]
    assert len(set(lengths)) >= ROWS // 2, f"prompt lengths {lengths}: the batch should be ragged"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.generation_config.pad_token_id
    width = max(lengths)
    ids = torch.full((ROWS, width), pad, dtype=torch.long)  # (B, W)
    mask = torch.zeros(ROWS, width, dtype=torch.long)  # (B, W)
    for b, p in enumerate(prompts):
        ids[b, width - p.shape[1]:] = p[0]
        mask[b, width - p.shape[1]:] = 1
    return prompts, ids, mask, pad


def test_every_row_of_a_batch_equals_its_single_row_greedy(default_model_fp32, batch):
    model, _ = default_model_fp32
    prompts, ids, mask, pad = batch
    width = ids.shape[1]
    alone_hf, alone_dk = [], []
    with torch.inference_mode():
        for p in prompts:
            hf = model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                pad_token_id=pad)
            alone_hf.append(hf[0, p.shape[1]:].tolist())
            alone_dk.append(decodekit.generate(model, p, "greedy", max_new_tokens=MAX_NEW_TOKENS)
                            .sequences[0, p.shape[1]:].tolist())
    failures = [f"row {b}: decodekit greedy alone differs from HF alone at new token "
                f"{first_difference(dk, hf)}" for b, (dk, hf) in enumerate(zip(alone_dk, alone_hf)) if dk != hf]
    for name, params in (("greedy", {}), ("lookahead", {})):
        out = decodekit.generate(model, ids, name, attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS, **params)
        assert torch.equal(out.sequences[:, :width], ids), f"{name}: the prompts were not kept as given"
        longest = max(len(r) for r in alone_hf)
        assert out.sequences.shape[1] == width + longest, f"{name}: {out.sequences.shape[1] - width} new columns"
        for b, (p, want) in enumerate(zip(prompts, alone_hf)):
            new = out.sequences[b, width:].tolist()
            got, fill = new[: len(want)], new[len(want):]
            if got != want:
                at = first_difference(got, want)
                prefix = p[0].tolist() + want[:at]
                failures.append(f"{name} batched, row {b} (prompt {p.shape[1]} tokens): differs from greedy alone at "
                                f"new token {at}: {got[at] if at < len(got) else '<end>'} vs {want[at]}; single-row "
                                f"greedy top-2 logit margin there {top2_margin(model, prefix):.3g}")
            elif fill != [pad] * len(fill):
                failures.append(f"{name} batched, row {b}: stopped after {len(want)} tokens but filled with {fill}")
        print(f"{name}: {out.stats.steps} row-steps, {out.stats.new_tokens} new tokens, "
              f"{out.stats.mean_accepted:.2f} tokens per row per step, {out.stats.seconds:.1f} s")
    assert not failures, "\n".join(failures)
