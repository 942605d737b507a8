"""run_bench(): the Python entry point behind `decodekit bench`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from decodekit.bench import batches, report, results, runner, sweep as sweeping
from decodekit.bench.methods import REFERENCE, MethodSpec, check_batch_size, default_method_texts, parse_methods
from decodekit.bench.questions import Question
from decodekit.errors import InputError


def model_folder(name: str) -> Path:
    """'default' -> the default model's converted folder (made on first use); else a local HuggingFace folder."""
    from decodekit.models import default_folder

    if name == "default":
        return default_folder()
    path = Path(name)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputError(f"--model must be 'default' or a local HuggingFace model folder (with config.json), "
                         f"got {name!r}")
    return path


def load_model(name: str, dtype: str = "float32", tp_size: int | None = None,
               device: str = "cpu") -> tuple[Any, Any]:
    """'default' -> decodekit.models.load_default(dtype); a local HuggingFace folder -> (model, tokenizer).
    tp_size=N: this rank's slice, sharded over N ranks (under torchrun). device: where the model is moved
    after loading (a name decodekit.cli.check_device accepted; not with tp_size)."""
    from decodekit.core.backend import load_pretrained
    from decodekit.models import load_default, resolve_dtype

    if name == "default":
        model, tokenizer = load_default(dtype, tp_size=tp_size)
    else:
        model, tokenizer = load_pretrained(model_folder(name), resolve_dtype(dtype), tp_size=tp_size)
    return (model if device == "cpu" else model.to(device)), tokenizer


def is_batch_run(batch_sizes: Sequence[int] | None) -> bool:
    """Whether batch_sizes asks for a batch run: anything but None or the single default size 1."""
    return batch_sizes is not None and tuple(batch_sizes) != (1,)


def check_batch_options(batch_sizes: Sequence[int] | None, multi_turn: bool) -> None:
    """A batch run takes first turns only: later turns follow hf-greedy's answer to each prompt, one at a time."""
    if is_batch_run(batch_sizes) and multi_turn:
        raise InputError(f"--multi-turn runs with batch size 1 only, got batch sizes "
                         f"{' '.join(map(str, batch_sizes or ()))}")


def plan_methods(methods: Sequence[str | MethodSpec] | None, sweep: str | None = None,
                 sweep_grid: str | None = None, batch_sizes: Sequence[int] | None = None
                 ) -> tuple[list[MethodSpec], dict[str, Any] | None]:
    """Every method spec parsed and validated (before any model is loaded); the sweep's plan, if any.

    batch_sizes (a batch run): the default methods leave out HF's batch-size-1-only methods, and a listed
    one is refused for a batch size > 1.
    """
    if sweep_grid is not None and sweep is None:
        raise InputError("--sweep-grid needs --sweep STRATEGY")
    sizes = batches.check_batch_sizes(batch_sizes) if batch_sizes is not None else (1,)
    if is_batch_run(sizes) and sweep is not None:
        raise InputError(f"--sweep runs with batch size 1 only, got batch sizes {' '.join(map(str, sizes))}")
    texts = None if methods is None else [m.label if isinstance(m, MethodSpec) else m for m in methods]
    if sweep is not None and texts is None:
        texts = [REFERENCE, "greedy"]
    specs = parse_methods(texts if texts is not None else default_method_texts(max(sizes)))
    for size in sizes:
        check_batch_size(specs, size)
    plan = None
    if sweep is not None:
        grid, swept = sweeping.sweep_specs(sweep, sweep_grid)
        present = {s.canonical(): s.label for s in specs}
        labels = []
        for spec in swept:  # a configuration already listed (e.g. the defaults) runs once, under its label
            if spec.canonical() not in present:
                specs.append(spec)
                present[spec.canonical()] = spec.label
            labels.append(present[spec.canonical()])
        plan = {"strategy": sweep, "grid": grid, "labels": labels}
    return specs, plan


def run_bench(model: Any, *, tokenizer: Any = None, questions: Sequence[Question] | None = None,
              prompts: Sequence[Any] | None = None, methods: Sequence[str | MethodSpec] | None = None,
              max_new_tokens: int = 128, multi_turn: bool = False, warmup: bool = True, progress: bool = True,
              sweep: str | None = None, sweep_grid: str | None = None,
              draft_models: Mapping[str, Any] | None = None, load_draft: Callable[[str], Any] | None = None,
              out: str | Path | None = None, command: Sequence[str] | None = None,
              config: Mapping[str, Any] | None = None, time_limit: float | None = None,
              batch_sizes: Sequence[int] | None = None) -> dict[str, Any]:
    """Benchmark methods on an already-loaded model; returns the results.json document (and writes DIR if out).

    questions (Spec-Bench rows, through tokenizer's chat template) or prompts (lists of token ids).
    methods: spec strings such as 'lookahead:W=7,N=4,G=7' or 'hf-prompt-lookup:num_tokens=10'; None
    for the defaults (hf-greedy, greedy, hf-prompt-lookup, every registered exact strategy without a draft).
    draft_models maps a spec's draft= value to a loaded model (or load_draft loads it by that value).
    time_limit: seconds after which no further prompt starts (see decodekit.bench.runner.run).
    batch_sizes: None or [1] for the prompt-by-prompt run; else a batch run (decodekit.bench.batches): every
    method decodes left-padded batches of each size in turn, one call per batch (first turns only, no sweep),
    and the document holds a `batch` section instead of the per-prompt summary.
    """
    specs, plan = plan_methods(methods, sweep, sweep_grid, batch_sizes)
    check_batch_options(batch_sizes, multi_turn)
    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    curve = results.cost_curve(model)  # measured (a few seconds) only if decodekit's cache lacks it
    described = {"load_average_at_start": load_before,
                 "model": getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__,
                 "dtype": str(getattr(model, "dtype", "")).replace("torch.", "")}
    if is_batch_run(batch_sizes):
        bench = batches.run(model, specs, batch_sizes=list(batch_sizes or ()), questions=questions, prompts=prompts,
                            tokenizer=tokenizer, max_new_tokens=max_new_tokens, warmup=warmup, progress=progress,
                            draft_models=draft_models, load_draft=load_draft, time_limit=time_limit)
        doc = results.batch_document(bench, command=list(command if command is not None else sys.argv),
                                     config={**described, **dict(config or {})}, cost_curve=curve)
        if out is not None:
            report.write_outputs(doc, Path(out))
        return doc
    run = runner.run(model, specs, questions=questions, prompts=prompts, tokenizer=tokenizer,
                     max_new_tokens=max_new_tokens, multi_turn=multi_turn, warmup=warmup, progress=progress,
                     draft_models=draft_models, load_draft=load_draft, time_limit=time_limit)
    summary_plan = None
    if plan is not None:
        summary = results.summarize(run)
        summary_plan = sweeping.fastest(summary, plan["strategy"], plan["grid"], plan["labels"])
    doc = results.document(run, command=list(command if command is not None else sys.argv),
                           config={**described, **dict(config or {})}, sweep=summary_plan, cost_curve=curve)
    if out is not None:
        report.write_outputs(doc, Path(out))
    return doc
