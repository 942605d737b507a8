"""`decodekit calibrate`: measure this machine's forward cost curve again, print it, save it (and plot it).

The measurement replaces whatever decodekit's cache held for this model, dtype, device, torch thread
count and CPU (see decodekit.core.costmodel); decodes in later processes plan their steps from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--model", default="default", metavar="default|PATH",
                        help="the default SmolLM2-135M-Instruct, or a local HuggingFace model folder")
    parser.add_argument("--device", default="cpu", metavar="cpu|cuda[:N]", help="where the model runs (default: cpu)")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the curve into FILE.png")


def _check_plot(plot: str | None) -> Path | None:
    """--plot: a .png in an existing folder, with matplotlib installed (checked before the model loads)."""
    from decodekit.errors import InputError

    if plot is None:
        return None
    path = Path(plot)
    if path.suffix.lower() != ".png":
        raise InputError(f"--plot must name a .png file, got {plot!r}")
    if not path.parent.is_dir():
        raise InputError(f"--plot {plot!r}: the folder {str(path.parent)!r} does not exist")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("--plot needs matplotlib; install it with:  pip install matplotlib") from None
    return path


def _load(loads: Any) -> str:
    return f"{loads[0]:.2f}" if loads else "unknown"


def table(cost: Any, cached: int, measured: Any = None) -> list[str]:
    """Markdown rows: tokens -> ms and x one token at `cached` cached positions (measured: the medians
    before noise dips were pooled, {tokens: seconds}, shown beside the curve)."""
    one = cost.seconds(1, cached)
    extra = " | ms measured (before pooling) |" if measured else " |"
    rows = [f"| tokens | ms at {cached} cached | x one token{extra}", "| --- | --- | ---" + (" | --- |" if measured else " |")]
    for tokens, seconds in cost.curve(cached, [k for k, _ in cost.points]):
        shown = f" | {1000 * measured[tokens]:.2f} |" if measured and tokens in measured else (" | |" if measured else " |")
        rows.append(f"| {tokens} | {1000 * seconds:.2f} | {seconds / one:.2f}{shown}")
    return rows


def report(cost: Any, *, model: str, dtype: str, device: str, path: Path | None) -> str:
    """What `decodekit calibrate` prints: the machine, both tables, the timings at the second cache length."""
    from decodekit.core.machine import describe_cpu

    info = cost.info
    lines = [f"model: {model} ({dtype}, {device}), torch threads {info.get('torch_threads')}",
             f"cpu: {describe_cpu()}",
             f"measured in {info.get('measure_seconds', 0):.1f} s, median of {info.get('repeats')} per size, dips "
             f"within the rounds' noise pooled; "
             f"load average (1 min) {_load(info.get('load_average'))} before, {_load(info.get('load_average_after'))} "
             f"after (other work on the machine inflates and distorts the curve)", "",
             *table(cost, cost.reference_cached, {int(k): float(v) for k, v in info.get("measured_points", [])})]
    second = info.get("second_cached")
    if second:
        measured = ", ".join(f"{k} token{'s' * (k != 1)} {1000 * s:.2f} ms" for k, s in info.get("second_points", []))
        lines += ["", *table(cost, second),
                  f"(at {second} cached, measured: {measured}; the rest follows the cache-length fit: "
                  f"+{1e9 * cost.per_cached:.1f} ns per cached position, "
                  f"+{1e9 * cost.per_cached_token:.2f} ns per cached position and extra token)"]
    lines += ["", f"saved to {path}" if path is not None else "not saved (see the warning above)"]
    return "\n".join(lines)


def plot(cost: Any, path: Path, title: str) -> None:
    """ms and x one token against the token count, at both cache lengths; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from decodekit.fileio import replacing

    lengths = [cost.reference_cached, *([cost.info["second_cached"]] if cost.info.get("second_cached") else [])]
    tokens = [k for k, _ in cost.points]  # the measured sizes
    fig, (ms_axis, ratio_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for cached in lengths:
        curve = cost.curve(cached, tokens)
        ms_axis.plot([k for k, _ in curve], [1000 * s for _, s in curve], marker="o", label=f"{cached} cached")
        ratio_axis.plot([k for k, _ in curve], [cost.relative(k, cached) for k, _ in curve], marker="o",
                        label=f"{cached} cached")
    for axis, label in ((ms_axis, "ms per forward"), (ratio_axis, "x one-token forward")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("new tokens in the forward")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with replacing(path) as temporary:
        fig.savefig(temporary, format="png", dpi=120)
    plt.close(fig)


def run_calibrate(args: argparse.Namespace) -> int:
    from decodekit.bench import api
    from decodekit.cli import check_device
    from decodekit.core.costmodel import calibrate

    plot_path = _check_plot(args.plot)
    check_device(args.device)  # before the folder: resolving the default model converts it on a cold cache
    api.model_folder(args.model)  # a bad --model fails before anything loads
    print(f"loading model {args.model} ({args.dtype}, on {args.device}) ...", file=sys.stderr)
    model, _ = api.load_model(args.model, args.dtype, device=args.device)
    print("measuring (a few seconds; a quiet machine gives the truest curve) ...", file=sys.stderr)
    cost, path = calibrate(model)
    name = "default (SmolLM2-135M-Instruct)" if args.model == "default" else args.model
    print(report(cost, model=name, dtype=args.dtype, device=str(model.device), path=path))
    if plot_path is not None:
        from decodekit.core.machine import describe_cpu

        plot(cost, plot_path, f"{name}, {args.dtype}, torch threads {cost.info.get('torch_threads')}\n{describe_cpu()}")
        print(f"plot in {plot_path}", file=sys.stderr)
    return 0
