"""`--sweep STRATEGY`: try a small grid of a strategy's parameters and report the fastest configuration.

A grid is `KEY=V1,V2;KEY=V1,V2;KEY=OTHER`: each key takes each of its values, and `KEY=OTHER`
ties a key to another key's value (`W=5,15;N=5;G=W` tries the paper's G=W). Lookahead's default
`W=1,6;N=3,5;C=0,2` tries 8 configurations. Every configuration is validated before any work.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping

from decodekit.bench.methods import MethodSpec, parse_method
from decodekit.errors import StrategyParameterError
from decodekit.plugins.manager import get_registry

# Kept small: each configuration runs on every prompt. Widen it with --sweep-grid.
DEFAULT_GRIDS = {"lookahead": "W=1,6;N=3,5;C=0,2", "jacobi": "block_size=4,8,16"}


def parse_grid(strategy: str, text: str) -> list[dict[str, str]]:
    """'W=4,7;N=3,5;G=W' -> [{'W': '4', 'N': '3', 'G': '4'}, ...] (values still strings)."""
    axes: dict[str, list[str]] = {}
    ties: dict[str, str] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        key, sep, values = (s.strip() for s in part.partition("="))
        if not sep or not key or not values:
            raise StrategyParameterError(f"--sweep-grid for {strategy!r}: expected KEY=V1,V2 parts separated by ';', "
                                         f"got {part!r}")
        if key in axes or key in ties:
            raise StrategyParameterError(f"--sweep-grid for {strategy!r}: {key!r} given twice")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if len(items) == 1 and not items[0].lstrip("-").replace(".", "", 1).isdigit():
            ties[key] = items[0]
        else:
            axes[key] = items
    for key, other in ties.items():
        if other not in axes:
            if other.lower() in ("true", "false", "yes", "no", "on", "off"):
                axes[key] = [other]
                continue
            raise StrategyParameterError(f"--sweep-grid for {strategy!r}: {key}={other} ties {key!r} to {other!r}, "
                                         f"which is not a key of the grid (keys: {', '.join(axes)})")
    ties = {k: v for k, v in ties.items() if k not in axes}
    if not axes:
        raise StrategyParameterError(f"--sweep-grid for {strategy!r} is empty")
    keys = list(axes)
    configs = []
    for values in itertools.product(*(axes[k] for k in keys)):
        config = dict(zip(keys, values))
        config.update({key: config[other] for key, other in ties.items()})
        configs.append(config)
    return configs


def sweep_specs(strategy: str, grid: str | None = None) -> tuple[str, list[MethodSpec]]:
    """The grid's text and one validated MethodSpec per configuration."""
    registry = get_registry()
    registry.get(strategy)  # an unknown name fails here, with the known names
    if grid is None:
        if strategy not in DEFAULT_GRIDS:
            raise StrategyParameterError(f"--sweep {strategy}: no default grid for {strategy!r} (defaults exist for "
                                         f"{', '.join(DEFAULT_GRIDS)}); give one with --sweep-grid 'KEY=V1,V2;...'")
        grid = DEFAULT_GRIDS[strategy]
    specs = [parse_method(f"{strategy}:" + ",".join(f"{k}={v}" for k, v in config.items()))
             for config in parse_grid(strategy, grid)]
    return grid, specs


def fastest(summary: Mapping[str, Any], strategy: str, grid: str, labels: list[str]) -> dict[str, Any]:
    """The configuration with the highest overall tokens/s, with every configuration's figures."""
    overall = summary["overall"]
    best = max(labels, key=lambda label: overall[label]["tokens_per_second"])
    return {
        "strategy": strategy,
        "grid": grid,
        "configurations": labels,
        "fastest": best,
        "fastest_tokens_per_second": overall[best]["tokens_per_second"],
        "fastest_speedup": overall[best]["speedup"],
        "fastest_identical_fraction": overall[best]["identical_fraction"],
    }
