"""The command line: `decodekit generate | strategies | bench | verify`."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Any, Sequence

# Each subcommand NAME lives in a module with `add_NAME_arguments(parser)` and `run_NAME(args) -> int`.
SUBCOMMANDS = {
    "generate": ("decodekit.cli_generate", "generate text on the default model, streaming it"),
    "strategies": ("decodekit.cli_generate", "list every registered strategy with its parameters"),
    "bench": ("decodekit.cli_bench", "benchmark every method side by side on Spec-Bench prompts"),
    "verify": ("decodekit.cli_verify", "check on real prompts that a strategy's output equals greedy decoding"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decodekit", description="Exact, faster decoding for HuggingFace causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        command = sub.add_parser(name, help=help_text, description=help_text)
        getattr(mod, f"add_{name}_arguments")(command)
        command.set_defaults(handler=getattr(mod, f"run_{name}"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from decodekit.errors import DecodekitError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the exact command, for reports
    try:
        return int(args.handler(args) or 0)
    except DecodekitError as exc:
        print(f"decodekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def parse_strategy_params(strategy: str, items: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE words -> typed keywords for `strategy` (validated again when the strategy is built)."""
    from decodekit.core.params import parse_value
    from decodekit.errors import StrategyParameterError
    from decodekit.plugins.manager import get_registry

    registry = get_registry()
    infos = {p.name: p for p in registry.get(strategy).params}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StrategyParameterError(f"strategy parameters are KEY=VALUE words, got {item!r}")
        if key not in infos:
            registry.make_params(strategy, {key: value})  # raises the unknown-parameter error with a suggestion
        try:
            out[key] = parse_value(infos[key], value)
        except ValueError as exc:
            raise StrategyParameterError(f"{strategy}: {exc}") from None
    registry.make_params(strategy, out)
    return out


def timed(fn, *args, **kwargs):
    began = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - began


if __name__ == "__main__":
    sys.exit(main())
