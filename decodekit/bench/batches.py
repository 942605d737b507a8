"""Running every method on batches of prompts: one call per method and batch, for one or more batch sizes.

For a batch size B the prompts are grouped in order into batches of B (the last holds the remainder),
each batch is left-padded with one pad id and given its attention mask (decodekit.bench.methods.pad_left),
and every method decodes the whole batch in one call. As in the prompt-by-prompt run (runner.py), every
method warms up on the first batch, the order of methods rotates from batch to batch, and hf-greedy's
rows are the reference each method's rows are compared with. Batch sizes run one after another in one
process, on the same prompts with the same methods.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Mapping, Sequence

import attrs

from decodekit.bench import memory
from decodekit.bench.divergence import Margins
from decodekit.bench.methods import (REFERENCE, Batch, BatchResult, MethodSpec, batch_runner_for, check_batch_size,
                                     pad_left)
from decodekit.bench.questions import Question
from decodekit.bench.runner import (Prompt, _check_methods, _question_prompts, _resolve_drafts, _rotated, as_prompts,
                                    out_of_time)
from decodekit.errors import InputError


@attrs.frozen(kw_only=True)
class BatchRecord:
    """One method on one batch. Per-row tuples are in the batch's row order.

    new_tokens: each row's new tokens, up to and including its eos (the pad fill after it not counted).
    seconds: the whole call's wall-clock time, which is the latency of every row in the batch.
    identical: per row, whether its new tokens equal hf-greedy's row token for token.
    """

    method: str
    batch_size: int
    batch_index: int
    question_ids: tuple[int | str, ...] = attrs.field(converter=tuple)
    categories: tuple[str, ...] = attrs.field(converter=tuple)
    prompt_tokens: tuple[int, ...] = attrs.field(converter=tuple)
    padded_length: int
    new_tokens: tuple[int, ...] = attrs.field(converter=tuple)
    seconds: float
    forwards: int | None
    identical: tuple[bool, ...] = attrs.field(converter=tuple)
    peak_memory_bytes: int | None
    memory_added_bytes: int | None
    # per row, where it parts from hf-greedy's row (decodekit.bench.divergence): the first differing new
    # token, greedy's top-2 logit margin there, whether that is a near-tie (None where the row is identical)
    first_difference: tuple[int | None, ...] = attrs.field(default=(), converter=tuple)
    margin: tuple[float | None, ...] = attrs.field(default=(), converter=tuple)
    near_tie: tuple[bool | None, ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen(kw_only=True)
class BatchSizeRun:
    """Every record of one batch size, and how far it got (a time limit or Ctrl-C may cut it)."""

    batch_size: int
    records: tuple[BatchRecord, ...] = attrs.field(converter=tuple)
    batches_planned: int
    batches_run: int
    prompts_run: int
    interrupted: bool = False


@attrs.frozen(kw_only=True)
class BatchBench:
    """A batch run: the methods (in order), one BatchSizeRun per batch size that finished a batch, the setup."""

    methods: tuple[MethodSpec, ...] = attrs.field(converter=tuple)
    batch_sizes: tuple[int, ...] = attrs.field(converter=tuple)
    runs: tuple[BatchSizeRun, ...] = attrs.field(converter=tuple)
    pad_id: int
    max_new_tokens: int
    device: str
    memory_method: str
    prompts_planned: int
    time_limit: float | None = None
    interrupted: bool = False
    near_tie_margin: float | None = None  # the top-2 margin below which a difference is a near-tie


def check_batch_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    """Batch sizes: a non-empty list of distinct integers >= 1, kept in the order given."""
    sizes = tuple(sizes)
    if not sizes:
        raise InputError("batch sizes: give at least one, e.g. --batch-size 1 2 4 8")
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputError(f"a batch size must be an integer >= 1, got {size!r}")
    duplicates = sorted({s for s in sizes if sizes.count(s) > 1})
    if duplicates:
        raise InputError(f"batch size(s) given twice: {', '.join(map(str, duplicates))}")
    return sizes


def group(prompts: Sequence[Prompt], batch_size: int) -> list[list[Prompt]]:
    """The prompts in order, in batches of batch_size; the last batch holds the remainder."""
    return [list(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]


def pad_id_for(tokenizer: Any, model: Any) -> int:
    """The id that pads a batch: the tokenizer's pad id, else its eos id; without a tokenizer the model's
    generation config's pad id, else its (first) eos id."""
    candidates = []
    if tokenizer is not None:
        candidates += [getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)]
    config = getattr(model, "generation_config", None)
    candidates += [getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)]
    for value in candidates:
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    raise InputError("no id to pad batches with: the tokenizer has no pad or eos token and the model's generation "
                     "config no pad_token_id or eos_token_id")


def _run_one(spec: MethodSpec, model: Any, batch: Batch, max_new_tokens: int, drafts: Mapping[str, Any]
             ) -> tuple[BatchResult, int | None, int | None]:
    run = batch_runner_for(spec)
    draft = drafts.get(spec.draft) if spec.draft is not None else None
    return memory.measure(lambda: run(spec, model, batch, max_new_tokens, draft), model.device)


def make_batch(prompts: Sequence[Prompt], pad_id: int, device: Any) -> Batch:
    return pad_left([p.input_ids for p in prompts], pad_id, device)


def warm_up(specs: Sequence[MethodSpec], model: Any, batch: Batch, drafts: Mapping[str, Any],
            max_new_tokens: int) -> None:
    """Every method once on the batch, untimed, for the full length (see runner.warm_up)."""
    for spec in specs:
        _run_one(spec, model, batch, max_new_tokens, drafts)


def run_batch(specs: Sequence[MethodSpec], model: Any, prompts: Sequence[Prompt], batch: Batch, *,
              batch_size: int, batch_index: int, max_new_tokens: int, drafts: Mapping[str, Any],
              tick: Callable[[str], None] | None = None, margins: Margins | None = None) -> list[BatchRecord]:
    """Every method once on one batch (the order rotated by batch_index); records in spec order.

    A row that differs from hf-greedy's is classified afterwards, outside every timed call, against a
    one-row forward of its prompt (`margins`: a decodekit.bench.divergence.Margins; None makes one).
    """
    results: dict[str, tuple[BatchResult, int | None, int | None]] = {}
    for spec in _rotated(specs, batch_index):
        results[spec.label] = _run_one(spec, model, batch, max_new_tokens, drafts)
        if tick is not None:
            tick(spec.label)
    reference = results[REFERENCE][0].new_tokens
    margins = margins if margins is not None else Margins(model)
    records = []
    for spec in specs:
        result, peak, added = results[spec.label]
        found = [margins.compare(p.input_ids, ref, row) for p, ref, row in zip(prompts, reference, result.new_tokens)]
        records.append(BatchRecord(
            method=spec.label, batch_size=batch_size, batch_index=batch_index,
            question_ids=[p.question_id for p in prompts], categories=[p.category for p in prompts],
            prompt_tokens=[len(p.input_ids) for p in prompts], padded_length=int(batch.input_ids.shape[1]),
            new_tokens=[len(row) for row in result.new_tokens], seconds=result.seconds, forwards=result.forwards,
            identical=[row == ref for row, ref in zip(result.new_tokens, reference)],
            peak_memory_bytes=peak, memory_added_bytes=added, first_difference=[f.position for f in found],
            margin=[f.margin for f in found], near_tie=[f.near_tie for f in found]))
    return records


def _run_size(specs: Sequence[MethodSpec], model: Any, prompts: Sequence[Prompt], batch_size: int, *, pad_id: int,
              max_new_tokens: int, drafts: Mapping[str, Any], warmup: bool, time_limit: float | None, bar: Any,
              records: list[BatchRecord], margins: Margins | None = None) -> int:
    """Run one batch size, appending each finished batch's records to `records`; returns the batches run.

    time_limit: no further batch starts once the elapsed time plus the mean time of a batch so far would pass it.
    """
    batches = group(prompts, batch_size)
    done = 0
    began = time.perf_counter()
    for index, rows in enumerate(batches):
        if out_of_time(model, time.perf_counter() - began, done, time_limit):
            bar.write(f"batch size {batch_size}: time limit {time_limit:.0f} s, stopping after {done} of "
                      f"{len(batches)} batches", file=sys.stderr)
            break
        batch = make_batch(rows, pad_id, model.device)
        if index == 0 and warmup:
            bar.set_description(f"batch size {batch_size}: warm-up")
            warm_up(specs, model, batch, drafts, max_new_tokens)

        def tick(label: str, index: int = index) -> None:
            bar.set_description(f"batch size {batch_size}: batch {index + 1}/{len(batches)} {label}")
            bar.update(1)

        records.extend(run_batch(specs, model, rows, batch, batch_size=batch_size, batch_index=index,
                                 max_new_tokens=max_new_tokens, drafts=drafts, tick=tick, margins=margins))
        done += 1
    return done


def run(model: Any, specs: Sequence[MethodSpec], *, batch_sizes: Sequence[int],
        questions: Sequence[Question] | None = None, prompts: Sequence[Any] | None = None, tokenizer: Any = None,
        max_new_tokens: int = 128, warmup: bool = True, progress: bool = True,
        draft_models: Mapping[str, Any] | None = None, load_draft: Callable[[str], Any] | None = None,
        time_limit: float | None = None) -> BatchBench:
    """Benchmark `specs` on batches of each size in `batch_sizes`, in turn, on the same prompts (first turns).

    questions go through the tokenizer's chat template; prompts are token-id lists. Batches are padded with
    pad_id_for(tokenizer, model). time_limit (seconds) is shared equally by the batch sizes (see _run_size).
    Ctrl-C stops the run at once: the batch it cut is dropped, the finished ones are kept (interrupted=True);
    with no batch finished it propagates.
    """
    from tqdm.auto import tqdm

    _check_methods(specs)
    sizes = check_batch_sizes(batch_sizes)
    for size in sizes:
        check_batch_size(specs, size)
    if (questions is None) == (prompts is None):
        raise InputError("give exactly one of questions= (with tokenizer=) or prompts= (token-id lists)")
    if questions is not None and tokenizer is None:
        raise InputError("questions= need tokenizer= to apply the chat template; or pass prompts= as token ids")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if time_limit is not None and (isinstance(time_limit, bool) or not time_limit > 0):
        raise InputError(f"time_limit must be a number of seconds > 0, got {time_limit!r}")
    drafts = _resolve_drafts(specs, draft_models, load_draft)
    items = (as_prompts(prompts) if prompts is not None
             else [p for p, _ in _question_prompts(questions, tokenizer, multi_turn=False)])
    if not items:
        raise InputError("no prompts to benchmark")
    pad_id = pad_id_for(tokenizer, model)
    margins = Margins(model)
    share = None if time_limit is None else time_limit / len(sizes)
    total = sum(len(group(items, size)) for size in sizes) * len(specs)
    bar = tqdm(total=total, file=sys.stderr, disable=not progress, unit="run", dynamic_ncols=True)
    runs: list[BatchSizeRun] = []
    interrupted = False
    try:
        for size in sizes:
            records: list[BatchRecord] = []
            done = 0
            try:
                done = _run_size(specs, model, items, size, pad_id=pad_id, max_new_tokens=max_new_tokens,
                                 drafts=drafts, warmup=warmup, time_limit=share, bar=bar, records=records,
                                 margins=margins)
            except KeyboardInterrupt:
                interrupted = True
                done = len(records) // len(specs)
            if done:
                runs.append(BatchSizeRun(batch_size=size, records=records, batches_planned=len(group(items, size)),
                                         batches_run=done, prompts_run=min(len(items), done * size),
                                         interrupted=interrupted))
            if interrupted:
                break
    finally:
        bar.close()
    if interrupted and not runs:
        raise KeyboardInterrupt
    return BatchBench(methods=specs, batch_sizes=sizes, runs=runs, pad_id=pad_id, max_new_tokens=max_new_tokens,
                      device=str(model.device), memory_method=memory.method_name(model.device),
                      prompts_planned=len(items), time_limit=time_limit, interrupted=interrupted,
                      near_tie_margin=margins.threshold)
