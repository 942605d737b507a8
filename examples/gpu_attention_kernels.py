"""On a GPU: decodekit's decode with torch's cuDNN attention allowed, and left out as decodekit does.

    python examples/gpu_attention_kernels.py [--device cuda] [--dtype bfloat16] [--prompts 3] [--max-new-tokens 128]

torch's scaled_dot_product_attention may choose cuDNN's kernels on a GPU (it prefers them on Hopper); they
build an execution graph for every new shape, and every step of a decode is a new shape. decodekit's
forwards run with cuDNN left out (decodekit.core.backend.decode_attention_kernels). This script times
greedy, planned lookahead and the paper's W=15, N=5, G=15 on Spec-Bench first turns (one per category,
after the first, which warms up every variant), each prompt and method with cuDNN allowed and then left
out, and prints seconds, steps, the milliseconds per step and whether the two outputs are the same (in
bfloat16 two attention kernels can round a near-tie apart). The questions come from
$DECODEKIT_SPEC_BENCH or ../shared/data/spec_bench/question.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

import decodekit
import decodekit.core.backend as backend
from decodekit.bench.questions import default_questions_path, read_questions, select
from decodekit.models import chat_ids, load_default

METHODS = (("greedy", "greedy", {}), ("lookahead (planned)", "lookahead", {}),
           ("lookahead W=15,N=5,G=15", "lookahead", {"W": 15, "N": 5, "G": 15}))
LEAVE_OUT = backend.decode_attention_kernels


def timed(model, ids, strategy: str, params: dict, allow_cudnn: bool, max_new_tokens: int):
    """(seconds, output) of one decode, with cuDNN attention allowed or left out."""
    backend.decode_attention_kernels = (lambda device: contextlib.nullcontext()) if allow_cudnn else LEAVE_OUT
    try:
        torch.cuda.synchronize()
        began = time.perf_counter()
        out = decodekit.generate(model, ids, strategy, max_new_tokens=max_new_tokens, **params)
        return time.perf_counter() - began, out
    finally:
        backend.decode_attention_kernels = LEAVE_OUT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this comparison needs a CUDA device (torch.cuda.is_available() is False)")
    model, tokenizer = load_default(args.dtype)
    model = model.to(args.device)
    questions = select(read_questions(default_questions_path()), per_category=1)
    warm = chat_ids(tokenizer, questions[0].turns[0]).to(args.device)
    for allow in (True, False):
        for _, strategy, params in METHODS:
            timed(model, warm, strategy, params, allow, 16)
    print("| category | method | cuDNN allowed: s | ms/step | left out: s | ms/step | steps | same output |")
    print("|---|---|---|---|---|---|---|---|")
    for question in questions[1:1 + args.prompts]:
        ids = chat_ids(tokenizer, question.turns[0]).to(args.device)
        for name, strategy, params in METHODS:
            (s_on, on), (s_off, off) = (timed(model, ids, strategy, params, allow, args.max_new_tokens)
                                        for allow in (True, False))
            same = on.sequences.tolist() == off.sequences.tolist()
            print(f"| {question.category} | {name} | {s_on:.2f} | {1000 * s_on / on.stats.steps:.1f} | {s_off:.2f} | "
                  f"{1000 * s_off / off.stats.steps:.1f} | {on.stats.steps} / {off.stats.steps} | {same} |", flush=True)


if __name__ == "__main__":
    main()
