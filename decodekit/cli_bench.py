"""`decodekit bench`: every method side by side on Spec-Bench prompts; tables and plots in --out DIR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from decodekit import cli_ranks
from decodekit.cli import positive_int


def _per_category(text: str) -> int | None:
    return None if text == "all" else positive_int(text, "an integer >= 1 or 'all'")


def _batch_size(text: str) -> int:
    return positive_int(text)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", metavar="FILE",
                        help="a Spec-Bench-format JSONL (default: $DECODEKIT_SPEC_BENCH, else "
                             "../shared/data/spec_bench/question.jsonl from the repository root)")
    parser.add_argument("--categories", nargs="+", metavar="CAT", help="only these categories (default: all)")
    parser.add_argument("--per-category", type=_per_category, default=2, metavar="K",
                        help="the first K questions of each category, or 'all' (default: 2)")
    parser.add_argument("--multi-turn", action="store_true",
                        help="run every turn (later turns follow hf-greedy's answers); default: first turns only")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="default: 128")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--strategies", "--methods", dest="strategies", nargs="+", metavar="SPEC",
                        help="methods to run, e.g. greedy lookahead:W=7,N=4,G=7 hf-prompt-lookup:num_tokens=10 "
                             "hf-assisted:draft=PATH (default: hf-greedy, greedy, hf-prompt-lookup and every "
                             "registered exact strategy that needs no draft model); hf-greedy is always included")
    parser.add_argument("--batch-size", "--batch-sizes", dest="batch_sizes", type=_batch_size, nargs="+",
                        metavar="B",
                        help="decode batches of B prompts: the prompts in order in groups of B, each group "
                             "left-padded (the tokenizer's pad id, else its eos id) with its attention mask and "
                             "decoded by each method in one call (hf-greedy: model.generate on the padded batch). "
                             "Several sizes (--batch-size 1 2 4 8) run one after another on the same prompts and "
                             "methods: one table with a row per (batch size, method) of total tokens/s, its ratio "
                             "to hf-greedy's, mean per-row latency, peak memory and the fraction of rows identical "
                             "to hf-greedy's, and a plot of tokens/s against batch size. First turns only; no "
                             "--sweep; hf-prompt-lookup and hf-assisted (batch size 1 only in transformers) are "
                             "left out of the default methods and refused if listed. Default: 1, the "
                             "prompt-by-prompt run")
    parser.add_argument("--model", default="default", metavar="default|PATH",
                        help="the default SmolLM2-135M-Instruct, or a local HuggingFace model folder")
    parser.add_argument("--device", default="cpu", metavar="cpu|cuda[:N]",
                        help="where the model runs (default: cpu); not with --nproc")
    parser.add_argument("--sweep", metavar="STRATEGY",
                        help="also try a grid of STRATEGY's parameters and report the fastest (e.g. lookahead)")
    parser.add_argument("--sweep-grid", metavar="GRID", help="the grid, e.g. 'W=4,7,10;N=3,5;G=W' "
                        "(default for lookahead: W=1,6;N=3,5;C=0,2)")
    parser.add_argument("--out", default="bench-out", metavar="DIR", help="where results go (default: bench-out)")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="start no further prompt after about SECONDS (questions run round robin over the "
                             "categories, so a cut run still covers them all; with several batch sizes each gets "
                             "an equal share and no further batch starts after it); default: no limit")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up generation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli_ranks.add_nproc_argument(parser)


def run_bench(args: argparse.Namespace) -> int:
    from decodekit.bench import api, questions as qs, report
    from decodekit.cli import INTERRUPTED, check_device, check_lengths
    from decodekit.core.backend import load_config, load_tokenizer
    from decodekit.errors import InputError
    from decodekit.models import chat_ids

    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise InputError(f"--time-limit must be a number of seconds > 0, got {args.time_limit}")
    # typos and impossible combinations fail before any work
    specs, _plan = api.plan_methods(args.strategies, args.sweep, args.sweep_grid, args.batch_sizes)
    api.check_batch_options(args.batch_sizes, args.multi_turn)
    check_device(args.device, args.nproc)
    path = Path(args.questions) if args.questions else qs.default_questions_path()
    chosen = qs.select(qs.read_questions(path), args.categories, args.per_category)
    folder = api.model_folder(args.model)
    tokenizer = load_tokenizer(folder)
    check_lengths(load_config(folder), args.max_new_tokens,
                  ((f"question {q.question_id} ({q.category})", chat_ids(tokenizer, q.turns[0]).shape[1]) for q in chosen))
    if args.nproc > 1:
        from decodekit.core.backend import check_shardable

        check_shardable(load_config(folder), args.nproc)
        if not cli_ranks.is_rank():
            return cli_ranks.launch(args.argv, args.nproc)  # each rank runs this command again, from the top
    try:
        return _bench(args, specs, chosen, path)
    finally:
        cli_ranks.leave()


def _bench(args: argparse.Namespace, specs: Any, chosen: Any, path: Path) -> int:
    """After the checks: load the model (this rank's slice of it with --nproc), run, report (rank 0 writes)."""
    from decodekit.bench import api, report
    from decodekit.cli import INTERRUPTED

    rank = cli_ranks.join(args.nproc) if args.nproc > 1 else 0
    sizes = f", batch sizes {' '.join(map(str, args.batch_sizes))}" if api.is_batch_run(args.batch_sizes) else ""
    print(f"{len(chosen)} questions, {len(specs)} methods: {', '.join(s.label for s in specs)}{sizes}",
          file=sys.stderr)
    tp_size = args.nproc if args.nproc > 1 else None
    print(f"loading model {args.model} ({args.dtype}{f', sharded over {tp_size} ranks' if tp_size else ''}"
          f"{f', on {args.device}' if args.device != 'cpu' else ''}) ...", file=sys.stderr)
    model, tokenizer = api.load_model(args.model, args.dtype, tp_size=tp_size, device=args.device)
    config = {"model": args.model if args.model != "default" else "default (SmolLM2-135M-Instruct)",
              "dtype": args.dtype, "questions": str(path), "categories": args.categories,
              "per_category": args.per_category, "warmup": not args.no_warmup, "ranks": args.nproc}
    command = ["decodekit", *getattr(args, "argv", sys.argv[1:])]
    doc = api.run_bench(model, tokenizer=tokenizer, questions=chosen, methods=[s.label for s in specs],
                        max_new_tokens=args.max_new_tokens, multi_turn=args.multi_turn, warmup=not args.no_warmup,
                        progress=not args.no_progress and rank == 0, sweep=args.sweep, sweep_grid=args.sweep_grid,
                        load_draft=lambda name: api.load_model(name, args.dtype, device=args.device)[0],
                        out=args.out if rank == 0 else None, command=command, config=config, time_limit=args.time_limit,
                        batch_sizes=args.batch_sizes)
    if doc["config"]["interrupted"]:
        print(f"decodekit: interrupted; partial results ({doc['config']['prompts_run']} of "
              f"{doc['config']['prompts_planned']} prompts) in {args.out}/", file=sys.stderr)
        return INTERRUPTED
    print(report.terminal_table(doc))
    if doc["sweep"]:
        print(f"fastest {doc['sweep']['strategy']} configuration: {doc['sweep']['fastest']}")
    print(f"results in {args.out}/ (results.json, results.md, plots)", file=sys.stderr)
    return 0
