"""Figures per method, per category and overall, and the results.json document.

Definitions (every figure is computed over the same prompts for every method):
- tokens_per_second: new tokens / wall-clock seconds, summed over the prompts (prefill included).
- speedup: tokens_per_second / hf-greedy's tokens_per_second in the same run. When a method's outputs
  equal hf-greedy's (identical_fraction 1.0) this is exactly the ratio of total times, also given as time_ratio.
- mean_tokens_per_forward: new tokens / forward passes of the target model, the prefill counted as one
  (Spec-Bench's "mean accepted tokens"; 1.0 for greedy). decodekit methods: GenerationStats.steps;
  HF methods: a forward pre-hook counts the target model's calls.
- tokens_computed_per_step: tokens fed through the target model per forward after the prefill (what a
  step costs: 1 for greedy, 1 + guesses for prompt lookup, more for lookahead's window).
- identical_fraction: prompts whose new tokens equal hf-greedy's, token for token.
- near_ties, other_differences: of the prompts that differ, those whose first differing new token is a
  numerical near-tie (hf-greedy's top-2 logit margin there below near_tie_margin for the dtype; see
  decodekit.bench.divergence), and the rest. Each record holds its first_difference, margin and near_tie.
- peak_memory_mib: the highest memory during any one call, model weights included; memory_added_mib:
  the most one call added over the memory before it (see decodekit.bench.memory for how; rough figures).

A batch run (batch sizes other than the single default 1; see decodekit.bench.batches) has, per batch size
and method, over the same batches for every method:
- tokens_per_second: every row's new tokens (up to and including its eos, not the pad fill), summed over the
  batches, / the calls' wall-clock seconds summed; speedup: that / hf-greedy's at the same batch size.
- mean_row_latency_s: the mean over rows of the seconds of the call that decoded the row (a batch's call is
  the latency of every row in it).
- tokens_per_forward: new tokens of all rows / forward passes of the target model (prefills included).
- identical_fraction: rows whose new tokens equal hf-greedy's row; near_ties, other_differences: rows as
  above (the margin from a one-row forward of the row's prompt); peak_memory_mib, memory_added_mib as above.
- slowest_row_alone (batch sizes above 1, when batch size 1 ran too): the speedup over hf-greedy if each batch
  took only as long as its slowest row took decoded alone by the same method. A batch lasts as long as its
  slowest row, so the gap to `speedup` is what decoding the rows together costs.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from typing import Any, Iterable, Mapping, Sequence

import attrs

from decodekit.bench.batches import BatchBench, BatchRecord
from decodekit.bench.memory import MIB, process_peak_rss
from decodekit.bench.methods import REFERENCE, MethodSpec
from decodekit.bench.runner import BenchRun, Record

SCHEMA = "decodekit-bench/1"
TOP_LEVEL_KEYS = ("schema", "created_utc", "command", "machine", "software", "config", "methods", "summary",
                  "records", "sweep")
FIGURE_KEYS = ("prompts", "new_tokens", "seconds", "tokens_per_second", "speedup", "time_ratio",
               "mean_tokens_per_forward", "tokens_computed_per_step", "identical_fraction", "near_ties",
               "other_differences", "peak_memory_mib", "memory_added_mib")
BATCH_FIGURE_KEYS = ("batch_size", "method", "batches", "prompts", "new_tokens", "seconds", "tokens_per_second",
                     "speedup", "mean_row_latency_s", "tokens_per_forward", "identical_fraction", "near_ties",
                     "other_differences", "peak_memory_mib", "memory_added_mib", "slowest_row_alone")


@attrs.frozen(kw_only=True)
class Figures:
    """One method's figures over a set of prompts (None where the run could not measure it)."""

    prompts: int
    new_tokens: int
    seconds: float
    tokens_per_second: float
    speedup: float | None
    time_ratio: float | None
    mean_tokens_per_forward: float | None
    tokens_computed_per_step: float | None
    identical_fraction: float
    near_ties: int  # prompts that differ from hf-greedy's at a near-tie
    other_differences: int  # prompts that differ otherwise
    peak_memory_mib: float | None
    memory_added_mib: float | None


def _ratio(top: float, bottom: float) -> float | None:
    return top / bottom if bottom > 0 else None


def _sum_known(values: Iterable[int | None]) -> int | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]


def figures(records: Sequence[Record], reference: Sequence[Record]) -> Figures:
    """Figures of one method's records against the reference's records on the same prompts."""
    new_tokens = sum(r.new_tokens for r in records)
    seconds = sum(r.seconds for r in records)
    tps = new_tokens / seconds if seconds > 0 else 0.0
    ref_tokens = sum(r.new_tokens for r in reference)
    ref_seconds = sum(r.seconds for r in reference)
    ref_tps = ref_tokens / ref_seconds if ref_seconds > 0 else 0.0
    forwards = _sum_known(r.forwards for r in records)
    computed = _sum_known(r.tokens_computed for r in records)
    steps = None if forwards is None else forwards - len(records)  # forwards after each prompt's prefill
    peaks = [r.peak_memory_bytes for r in records if r.peak_memory_bytes is not None]
    added = [r.memory_added_bytes for r in records if r.memory_added_bytes is not None]
    return Figures(
        prompts=len(records), new_tokens=new_tokens, seconds=seconds, tokens_per_second=tps,
        speedup=_ratio(tps, ref_tps), time_ratio=_ratio(ref_seconds, seconds),
        mean_tokens_per_forward=None if not forwards else new_tokens / forwards,
        tokens_computed_per_step=None if computed is None or not steps else computed / steps,
        identical_fraction=sum(r.identical for r in records) / len(records) if records else 0.0,
        near_ties=sum(1 for r in records if not r.identical and r.near_tie),
        other_differences=sum(1 for r in records if not r.identical and not r.near_tie),
        peak_memory_mib=max(peaks) / MIB if peaks else None,
        memory_added_mib=max(added) / MIB if added else None,
    )


def _by(records: Iterable[Record], key: str) -> dict[Any, list[Record]]:
    groups: dict[Any, list[Record]] = {}
    for record in records:
        groups.setdefault(getattr(record, key), []).append(record)
    return groups


def summarize(run: BenchRun) -> dict[str, Any]:
    """{"overall": {method: figures}, "by_category": {category: {method: figures}}} as plain dicts."""
    def table(records: Sequence[Record]) -> dict[str, dict[str, Any]]:
        by_method = _by(records, "method")
        reference = by_method.get(REFERENCE, [])
        return {spec.label: attrs.asdict(figures(by_method.get(spec.label, []), reference))
                for spec in run.methods}

    return {"overall": table(run.records),
            "by_category": {category: table(rows) for category, rows in _by(run.records, "category").items()}}


@attrs.frozen(kw_only=True)
class BatchFigures:
    """One method's figures at one batch size, over the batches that ran (None where not measured)."""

    batch_size: int
    method: str
    batches: int
    prompts: int
    new_tokens: int
    seconds: float
    tokens_per_second: float
    speedup: float | None
    mean_row_latency_s: float
    tokens_per_forward: float | None
    identical_fraction: float
    near_ties: int  # rows that differ from hf-greedy's row at a near-tie
    other_differences: int  # rows that differ otherwise
    peak_memory_mib: float | None
    memory_added_mib: float | None
    # the speedup the method would reach if each batch lasted only as long as its slowest row took decoded
    # alone by the same method (the batch-size-1 run): what co-scheduling the rows costs (None: not measured)
    slowest_row_alone: float | None = None


def slowest_row_alone_seconds(records: Sequence[BatchRecord], alone: Sequence[BatchRecord]) -> float | None:
    """Summed over `records`' batches: the longest time any of the batch's rows took in `alone`, the same
    method's batch-size-1 records. None where any row was not decoded alone, or there are no records."""
    seconds = {r.question_ids[0]: r.seconds for r in alone if len(r.question_ids) == 1}
    if not records or any(q not in seconds for r in records for q in r.question_ids):
        return None
    return sum(max(seconds[q] for q in r.question_ids) for r in records)


def batch_figures(records: Sequence[BatchRecord], reference: Sequence[BatchRecord], *, batch_size: int,
                  method: str, alone: Sequence[BatchRecord] = ()) -> BatchFigures:
    """Figures of one method's batch records against hf-greedy's records on the same batches (`alone`: the
    method's batch-size-1 records, for `slowest_row_alone`)."""
    new_tokens = sum(sum(r.new_tokens) for r in records)
    seconds = sum(r.seconds for r in records)
    tps = new_tokens / seconds if seconds > 0 else 0.0
    ref_seconds = sum(r.seconds for r in reference)
    ref_tps = sum(sum(r.new_tokens) for r in reference) / ref_seconds if ref_seconds > 0 else 0.0
    rows = sum(len(r.new_tokens) for r in records)
    forwards = _sum_known(r.forwards for r in records)
    peaks = [r.peak_memory_bytes for r in records if r.peak_memory_bytes is not None]
    added = [r.memory_added_bytes for r in records if r.memory_added_bytes is not None]
    return BatchFigures(
        batch_size=batch_size, method=method, batches=len(records), prompts=rows, new_tokens=new_tokens,
        seconds=seconds, tokens_per_second=tps, speedup=_ratio(tps, ref_tps),
        mean_row_latency_s=sum(r.seconds * len(r.new_tokens) for r in records) / rows if rows else 0.0,
        tokens_per_forward=None if not forwards else new_tokens / forwards,
        identical_fraction=sum(sum(r.identical) for r in records) / rows if rows else 0.0,
        near_ties=sum(1 for r in records for same, near in _row_verdicts(r) if not same and near),
        other_differences=sum(1 for r in records for same, near in _row_verdicts(r) if not same and not near),
        peak_memory_mib=max(peaks) / MIB if peaks else None,
        memory_added_mib=max(added) / MIB if added else None,
        slowest_row_alone=_alone_speedup(new_tokens, slowest_row_alone_seconds(records, alone), ref_tps),
    )


def _alone_speedup(new_tokens: int, seconds: float | None, ref_tps: float) -> float | None:
    return None if seconds is None or seconds <= 0 else _ratio(new_tokens / seconds, ref_tps)


def _row_verdicts(record: BatchRecord) -> list[tuple[bool, bool | None]]:
    """(identical, near_tie) per row; near_tie None where the record was made without classification."""
    near = list(record.near_tie) or [None] * len(record.identical)
    return list(zip(record.identical, near))


def batch_table(bench: BatchBench) -> list[dict[str, Any]]:
    """One row per (batch size, method): batch sizes in the order they ran, methods in spec order."""
    rows = []
    single = next((_by(r.records, "method") for r in bench.runs if r.batch_size == 1), {})
    for size_run in bench.runs:
        by_method = _by(size_run.records, "method")
        for spec in bench.methods:
            alone = single.get(spec.label, []) if size_run.batch_size > 1 else []
            rows.append(attrs.asdict(batch_figures(by_method.get(spec.label, []), by_method.get(REFERENCE, []),
                                                   batch_size=size_run.batch_size, method=spec.label, alone=alone)))
    return rows


# -- the machine and the software -----------------------------------------------------------------


def cpu_model() -> str:
    from decodekit.core.machine import cpu_info

    return cpu_info()["cpu_model"]


def machine_info(cost_curve: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The machine: CPU (model, family, model number, the flags that change torch's kernels), cores, torch
    threads, load; `cost_curve` (see cost_curve()) when the run measured one."""
    import torch

    from decodekit.core.machine import cpu_info

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info = {
        **cpu_info(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "process_peak_rss_mib": process_peak_rss() / MIB,
        "cost_curve": dict(cost_curve) if cost_curve is not None else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cost_curve(model: Any) -> dict[str, Any] | None:
    """The target's forward cost on this machine (decodekit.core.costmodel: measured once, then cached):
    ms and x a one-token forward per token count at its reference cache length. None if the model cannot
    be driven by decodekit's backend."""
    from decodekit.core.costmodel import CURVE_TOKENS, cost_model_for
    from decodekit.errors import DecodekitError

    try:
        cost = cost_model_for(model)
    except DecodekitError:
        return None
    cached = cost.reference_cached
    curve = cost.curve(cached, CURVE_TOKENS)
    return {"cached": cached, "tokens": [k for k, _ in curve], "ms": [1000 * s for _, s in curve],
            "x_one_token": [cost.relative(k, cached) for k, _ in curve],
            "second_cached": cost.info.get("second_cached"), "per_cached_ns": 1e9 * cost.per_cached,
            "measured_utc": cost.info.get("measured_utc")}


def software_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    import decodekit

    try:
        transformers_version = version("transformers")
    except PackageNotFoundError:
        transformers_version = None
    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers_version,
            "decodekit": decodekit.__version__}


def method_rows(specs: Sequence[MethodSpec]) -> list[dict[str, Any]]:
    return [{"label": s.label, "name": s.name, "family": s.family, "params": dict(s.params), "draft": s.draft,
             "exact": s.exact} for s in specs]


def _setup(command: Sequence[str], cost_curve: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keys every results.json opens with: schema, when, the command, the machine and the software."""
    return {
        "schema": SCHEMA,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(command),
        "machine": machine_info(cost_curve),
        "software": software_info(),
    }


def document(run: BenchRun, *, command: Sequence[str], config: Mapping[str, Any],
             sweep: Mapping[str, Any] | None = None, cost_curve: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole results.json document (cost_curve: see cost_curve(), recorded under machine)."""
    return {
        **_setup(command, cost_curve),
        "config": {**dict(config), "max_new_tokens": run.max_new_tokens, "multi_turn": run.multi_turn,
                   "device": run.device, "memory_method": run.memory_method, "reference": REFERENCE,
                   "prompts_planned": run.prompts_planned, "prompts_run": run.prompts_run,
                   "time_limit_s": run.time_limit, "interrupted": run.interrupted,
                   "near_tie_margin": run.near_tie_margin},
        "methods": method_rows(run.methods),
        "summary": summarize(run),
        "records": [attrs.asdict(r) for r in run.records],
        "sweep": dict(sweep) if sweep is not None else None,
    }


def batch_document(bench: BatchBench, *, command: Sequence[str], config: Mapping[str, Any],
                   cost_curve: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The results.json document of a batch run: the same setup keys as document(), `summary` and `records`
    null and empty (there are no per-prompt timings), and the `batch` section."""
    ran = {r.batch_size: r for r in bench.runs}
    return {
        **_setup(command, cost_curve),
        "config": {**dict(config), "max_new_tokens": bench.max_new_tokens, "multi_turn": False,
                   "device": bench.device, "memory_method": bench.memory_method, "reference": REFERENCE,
                   "prompts_planned": bench.prompts_planned,
                   "prompts_run": min(ran[s].prompts_run if s in ran else 0 for s in bench.batch_sizes),
                   "time_limit_s": bench.time_limit, "interrupted": bench.interrupted,
                   "batch_sizes": list(bench.batch_sizes), "near_tie_margin": bench.near_tie_margin},
        "methods": method_rows(bench.methods),
        "summary": None,
        "records": [],
        "sweep": None,
        "batch": {
            "padding": "left",
            "pad_id": bench.pad_id,
            "batch_sizes": list(bench.batch_sizes),
            "runs": [{"batch_size": r.batch_size, "batches_planned": r.batches_planned, "batches_run": r.batches_run,
                      "prompts_run": r.prompts_run, "interrupted": r.interrupted} for r in bench.runs],
            "table": batch_table(bench),
            "records": [_as_json(record) for r in bench.runs for record in r.records],
        },
    }


def _as_json(record: BatchRecord) -> dict[str, Any]:
    """A record as results.json holds it (per-row tuples as lists), so the returned document equals the file."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(record).items()}


def _check_batch(doc: Mapping[str, Any]) -> None:
    batch = doc["batch"]
    absent = [k for k in ("batch_sizes", "runs", "table", "records") if k not in batch]
    if absent:
        raise ValueError(f"results.json batch lacks {', '.join(absent)}")
    rows = {(row.get("batch_size"), row.get("method")): row for row in batch["table"]}
    for size in (r["batch_size"] for r in batch["runs"]):
        for label in (m["label"] for m in doc["methods"]):
            if (size, label) not in rows:
                raise ValueError(f"batch table lacks batch size {size} / {label!r}")
            absent = [k for k in BATCH_FIGURE_KEYS if k not in rows[(size, label)]]
            if absent:
                raise ValueError(f"batch table, batch size {size} / {label!r} lacks {', '.join(absent)}")


def check_document(doc: Mapping[str, Any]) -> None:
    """Raise ValueError if `doc` lacks a key of the results.json schema (what tests and readers rely on)."""
    missing = [k for k in TOP_LEVEL_KEYS if k not in doc]
    if missing:
        raise ValueError(f"results.json lacks {', '.join(missing)}")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"results.json schema is {doc['schema']!r}, expected {SCHEMA!r}")
    if doc.get("batch") is not None:
        _check_batch(doc)
        return
    labels = [m["label"] for m in doc["methods"]]
    for scope, table in [("overall", doc["summary"]["overall"]), *doc["summary"]["by_category"].items()]:
        for label in labels:
            if label not in table:
                raise ValueError(f"summary {scope!r} lacks method {label!r}")
            absent = [k for k in FIGURE_KEYS if k not in table[label]]
            if absent:
                raise ValueError(f"summary {scope!r} / {label!r} lacks {', '.join(absent)}")
