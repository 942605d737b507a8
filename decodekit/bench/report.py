"""results.md, the terminal table and the PNG plots, all drawn from the results.json document (a batch run's too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from decodekit.fileio import replacing, write_text

COLUMNS = (
    ("method", "method"),
    ("tokens/s", "tokens_per_second"),
    ("speedup vs hf-greedy", "speedup"),
    ("tokens/forward", "mean_tokens_per_forward"),
    ("tokens computed/step", "tokens_computed_per_step"),
    ("identical to hf-greedy", "identical_fraction"),
    ("differing: near-tie / other", "differences"),
    ("peak memory (MiB)", "peak_memory_mib"),
    ("memory added (MiB)", "memory_added_mib"),
)

BATCH_COLUMNS = (
    ("batch size", "batch_size"),
    ("method", "method"),
    ("prompts", "prompts"),
    ("tokens/s", "tokens_per_second"),
    ("vs hf-greedy", "speedup"),
    ("mean row latency (s)", "mean_row_latency_s"),
    ("tokens/forward", "tokens_per_forward"),
    ("identical to hf-greedy", "identical_fraction"),
    ("differing: near-tie / other", "differences"),
    ("peak memory (MiB)", "peak_memory_mib"),
    ("if slowest row alone", "slowest_row_alone"),
)


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if key in ("speedup", "slowest_row_alone"):
        return f"{value:.2f}x"
    if key == "identical_fraction":
        return f"{100 * value:.0f}%"
    if isinstance(value, float):
        return f"{value:.1f}" if key in ("tokens_per_second", "peak_memory_mib", "memory_added_mib") else f"{value:.2f}"
    return str(value)


def _value(figures: Mapping[str, Any], key: str) -> Any:
    """A column's value; "differences" joins near_ties and other_differences (absent in older documents)."""
    if key == "differences":
        near, other = figures.get("near_ties"), figures.get("other_differences")
        return None if near is None or other is None else f"{near} / {other}"
    if key == "slowest_row_alone":
        return figures.get(key)
    return figures[key]


def _batch_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    return [[_fmt(key, _value(row, key)) for _, key in BATCH_COLUMNS] for row in doc["batch"]["table"]]


def _loads(values: Sequence[float] | None) -> str:
    return "n/a" if not values else "/".join(f"{v:.2f}" for v in values)


def _rows(table: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    return [[label] + [_fmt(key, _value(figs, key)) for _, key in COLUMNS[1:]] for label, figs in table.items()]


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def terminal_table(doc: Mapping[str, Any]) -> str:
    """The overall table (a batch run: the batch table) as aligned plain text."""
    if doc.get("batch") is not None:
        header, rows = [title for title, _ in BATCH_COLUMNS], _batch_rows(doc)
    else:
        header, rows = [title for title, _ in COLUMNS], _rows(doc["summary"]["overall"])
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in [header, *rows]]
    out.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(out)


def speedup_by_category(doc: Mapping[str, Any]) -> str:
    labels = [m["label"] for m in doc["methods"]]
    rows = [[category] + [_fmt("speedup", table[label]["speedup"]) for label in labels]
            for category, table in doc["summary"]["by_category"].items()]
    rows.append(["**overall**"] + [_fmt("speedup", doc["summary"]["overall"][label]["speedup"]) for label in labels])
    return _markdown_table(["category", *labels], rows)


def _cpu_ids(machine: Mapping[str, Any]) -> str:
    """The CPU's family, model number and flags: ` (family 26, model 2, flags avx2 avx512f)`; older files: ""."""
    ids = [f"{name} {machine[key]}" for name, key in (("family", "cpu_family"), ("model", "cpu_model_number"))
           if machine.get(key) is not None]
    flags = machine.get("cpu_flags")
    if flags is not None:
        ids.append(f"flags {' '.join(flags) or 'none that matter'}")
    return f" ({', '.join(ids)})" if ids else ""


def _cost_curve(curve: Mapping[str, Any]) -> str:
    """One line: a one-token forward's ms, then each token count's cost in one-token forwards."""
    ratios = ", ".join(f"{k}: {x:.2f}" for k, x in zip(curve["tokens"], curve["x_one_token"]) if k != 1)
    return (f"one token {curve['ms'][curve['tokens'].index(1)]:.1f} ms after {curve['cached']} cached; "
            f"x a one-token forward for k tokens: {ratios}")


def _setup(doc: Mapping[str, Any], prompts: str) -> list[str]:
    """results.md's title and setup lines; `prompts`: the prompts line's figure."""
    config, machine, software = doc["config"], doc["machine"], doc["software"]
    return [
        "# decodekit bench results",
        "",
        f"- command: `{' '.join(doc['command'])}`",
        f"- created (UTC): {doc['created_utc']}",
        f"- model: {config.get('model')} ({config.get('dtype')}), device {config['device']}",
        f"- prompts: {prompts} "
        f"({'all turns' if config['multi_turn'] else 'first turns'}), max_new_tokens {config['max_new_tokens']}",
        f"- machine: {machine['cpu_model']}{_cpu_ids(machine)}, {machine['cpu_cores']} cores "
        f"({machine['cpu_cores_usable']} usable), torch threads {machine['torch_threads']}, load average "
        f"(1, 5, 15 min) at the start {_loads(config.get('load_average_at_start'))}, at the end "
        f"{_loads(machine.get('load_average'))}",
        *([f"- forward cost: {_cost_curve(machine['cost_curve'])}"] if machine.get("cost_curve") else []),
        f"- software: Python {software['python']}, torch {software['torch']}, transformers "
        f"{software['transformers']}, decodekit {software['decodekit']}",
        f"- memory: {config['memory_method']}",
        *([f"- differing outputs: where a method's output parts from hf-greedy's, hf-greedy's top-2 logit margin at "
           f"the first differing new token (one forward of the prompt and the shared tokens); a near-tie below "
           f"{config['near_tie_margin']:g}, where rounding can swap the two tokens; other: at or above it, or one "
           f"output stopping where the other goes on"] if config.get("near_tie_margin") is not None else []),
        *([f"- **cut short by {_cut_by(config)}: {config['prompts_run']} of {config['prompts_planned']} prompts ran**"]
          if config.get("prompts_run", 0) < config.get("prompts_planned", 0) else []),
    ]


def markdown(doc: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """results.md: the setup, the overall table, speedup per category, the sweep, the plots (a batch run:
    the setup, the batch table, the plot)."""
    if doc.get("batch") is not None:
        return batch_markdown(doc, plots)
    parts = [
        *_setup(doc, str(doc["summary"]["overall"][doc["methods"][0]["label"]]["prompts"])),
        "",
        "## Overall",
        "",
        _markdown_table([title for title, _ in COLUMNS], _rows(doc["summary"]["overall"])),
        "",
        "## Speedup over hf-greedy per category",
        "",
        speedup_by_category(doc),
        "",
    ]
    if doc.get("sweep"):
        sweep = doc["sweep"]
        parts += ["## Sweep", "", f"Strategy `{sweep['strategy']}`, grid `{sweep['grid']}`: fastest configuration "
                  f"**`{sweep['fastest']}`** ({_fmt('tokens_per_second', sweep['fastest_tokens_per_second'])} "
                  f"tokens/s, {_fmt('speedup', sweep['fastest_speedup'])}).", ""]
    for plot in plots:
        parts += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    return "\n".join(parts)


def batch_markdown(doc: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """results.md of a batch run: the setup, how batches were made, one row per (batch size, method), the plot."""
    batch = doc["batch"]
    cut = [f"batch size {r['batch_size']}: {r['batches_run']} of {r['batches_planned']} batches"
           for r in batch["runs"] if r["batches_run"] < r["batches_planned"]]
    missing = [str(size) for size in batch["batch_sizes"] if size not in {r["batch_size"] for r in batch["runs"]}]
    parts = [
        *_setup(doc, str(doc["config"]["prompts_planned"])),
        f"- batches: batch sizes {', '.join(map(str, batch['batch_sizes']))}, run one after another on the same "
        f"prompts; the prompts grouped in order (the last batch holds the remainder), each batch {batch['padding']}-"
        f"padded with id {batch['pad_id']} and its attention mask; one call per method and batch",
        *([f"- **not run: batch size {', '.join(missing)}**"] if missing else []),
        *([f"- **cut: {'; '.join(cut)}**"] if cut else []),
        "",
        "## Batches",
        "",
        "tokens/s: every row's new tokens (up to its eos) / the calls' seconds; vs hf-greedy: that / hf-greedy's "
        "tokens/s on the same batches; mean row latency: the seconds of the call that decoded a row, averaged over rows; "
        "if slowest row alone: the speedup the method would reach if each batch lasted only as long as its slowest "
        "row took decoded alone by the same method (in the batch-size-1 run; n/a without it): a batch lasts as "
        "long as its slowest row, so this shows what decoding the rows together costs.",
        "",
        _markdown_table([title for title, _ in BATCH_COLUMNS], _batch_rows(doc)),
        "",
    ]
    for plot in plots:
        parts += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    return "\n".join(parts)


# -- plots ------------------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cut_by(config: Mapping[str, Any]) -> str:
    if config.get("interrupted"):
        return "an interrupt (Ctrl-C)"
    return f"--time-limit {config['time_limit_s']:.0f} s"


def _save(fig: Any, ax: Any, path: Path) -> Path:
    """The legend beside the axes, then the figure written whole (or not at all) to `path`, and closed."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with replacing(path) as temporary:
        fig.savefig(temporary, dpi=110, format="png")
    plt.close(fig)
    return path


def plot_speedup(doc: Mapping[str, Any], path: Path) -> Path | None:
    """Grouped bars: speedup over hf-greedy per category (and overall), one bar per method."""
    plt = _pyplot()
    if plt is None:
        return None
    labels = [m["label"] for m in doc["methods"] if m["label"] != doc["config"]["reference"]]
    tables = {**doc["summary"]["by_category"], "overall": doc["summary"]["overall"]}
    categories = list(tables)
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(categories) + 3.5), 4.8))
    for i, label in enumerate(labels):
        values = [tables[c][label]["speedup"] or 0.0 for c in categories]
        bars = ax.bar([x + i * width for x in range(len(categories))], values, width, label=label)
        if len(labels) * len(categories) <= 60:
            ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(categories))])
    ax.set_xticklabels(categories, rotation=40, ha="right")
    ax.set_ylabel("speedup over hf-greedy (tokens/s ratio)")
    ax.set_title("Speedup per category")
    ax.margins(y=0.15)
    return _save(fig, ax, path)


def plot_scaling(doc: Mapping[str, Any], path: Path) -> Path | None:
    """Tokens per forward against tokens computed per step, one point per method (lookahead's W, N sweep).

    Points of one strategy (its configurations) share a colour and are labelled with their parameters.
    hf-greedy is left out: it is greedy's point.
    """
    plt = _pyplot()
    reference = doc["config"]["reference"]
    points = [(label, figs["tokens_computed_per_step"], figs["mean_tokens_per_forward"])
              for label, figs in doc["summary"]["overall"].items()
              if label != reference and figs["tokens_computed_per_step"] is not None
              and figs["mean_tokens_per_forward"] is not None]
    if plt is None or not points:
        return None
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(8.0, 4.8))
    families: dict[str, list] = {}
    for label, x, y in points:
        families.setdefault(label.split(":")[0], []).append((label, x, y))
    for family, rows in families.items():
        ax.scatter([r[1] for r in rows], [r[2] for r in rows], label=family, s=30)
        for label, x, y in rows:
            if ":" in label:
                ax.annotate(label.partition(":")[2], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("tokens computed per step (log scale)")
    ax.set_ylabel("tokens per forward pass (mean accepted)")
    ax.set_title("Tokens per step against compute per step")
    return _save(fig, ax, path)


def plot_batch_throughput(doc: Mapping[str, Any], path: Path) -> Path | None:
    """Total tokens/s against batch size, one line per method (a batch run's table)."""
    plt = _pyplot()
    if plt is None:
        return None
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    lines: dict[str, list[tuple[int, float]]] = {}
    for row in doc["batch"]["table"]:
        lines.setdefault(row["method"], []).append((row["batch_size"], row["tokens_per_second"]))
    sizes = sorted({row["batch_size"] for row in doc["batch"]["table"]})
    fig, ax = plt.subplots(figsize=(8.0, 4.8))
    for method, points in lines.items():
        points.sort()
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("batch size (log scale)")
    ax.set_ylabel("total tokens/s (all rows)")
    ax.set_title("Throughput against batch size")
    ax.set_ylim(bottom=0)
    return _save(fig, ax, path)


def write_outputs(doc: Mapping[str, Any], out: Path) -> list[Path]:
    """results.json, results.md and the plots in `out`, each written whole or not at all; returns the files written."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    if doc.get("batch") is not None:
        plots = [p for p in (plot_batch_throughput(doc, out / "throughput_vs_batch_size.png"),) if p is not None]
    else:
        plots = [p for p in (plot_speedup(doc, out / "speedup_by_category.png"),
                             plot_scaling(doc, out / "tokens_per_step_vs_compute.png")) if p is not None]
    write_text(out / "results.json", json.dumps(doc, indent=2, default=str) + "\n")
    write_text(out / "results.md", markdown(doc, [str(p) for p in plots]))
    return [out / "results.json", out / "results.md", *plots]
