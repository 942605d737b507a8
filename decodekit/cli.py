"""The command line: `decodekit generate | strategies | bench | verify | calibrate`.

Start-up imports nothing heavy (decodekit's package loads its names lazily), and `main` wraps the
whole run, argument parsing and imports included, so that Ctrl-C at any moment ends with one line
and exit status 130, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import signal
import sys
import threading
from typing import Any, Iterable, Iterator, Sequence

# Each subcommand NAME lives in a module with `add_NAME_arguments(parser)` and `run_NAME(args) -> int`.
SUBCOMMANDS = {
    "generate": ("decodekit.cli_generate", "generate text on the default model, streaming it"),
    "strategies": ("decodekit.cli_generate", "list every registered strategy with its parameters"),
    "bench": ("decodekit.cli_bench", "benchmark every method side by side on Spec-Bench prompts"),
    "verify": ("decodekit.cli_verify", "check on real prompts that a strategy's output equals greedy decoding"),
    "calibrate": ("decodekit.cli_calibrate", "measure this machine's forward cost curve again, print and save it"),
}

INTERRUPTED = 130  # the shell's status for a process ended by SIGINT (128 + 2)

# A strategy parameter on the command line: NAME=VALUE with no white space (W=15, max_ngram=2).
_PARAM_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*")


def is_param_word(word: str) -> bool:
    """Whether a command-line word is a KEY=VALUE strategy parameter (rather than a prompt or a stray word)."""
    return _PARAM_WORD.fullmatch(word) is not None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decodekit", description="Exact, faster decoding for HuggingFace causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.set_defaults(commands={})
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        command = sub.add_parser(name, help=help_text, description=help_text)
        getattr(mod, f"add_{name}_arguments")(command)
        command.set_defaults(handler=getattr(mod, f"run_{name}"))
        parser.get_default("commands")[name] = command
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line; KEY=VALUE strategy parameters may stand anywhere after the subcommand.

    argparse takes a command's positional words in one run, so `generate "Hi" --strategy lookahead W=2`
    would leave `W=2` unrecognised; such words (any that is not an option) are gathered into the
    positional list that a command names with `set_defaults(param_words=DEST)`, which the command then
    sorts into prompt and KEY=VALUE parameters. An unknown option is an error of that subcommand.
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    command = parser.get_default("commands")[args.command]
    dest = getattr(args, "param_words", None)  # the positional list a command's KEY=VALUE words go to
    stray = [w for w in extras if w.startswith("-") or dest is None]
    if stray:
        command.error(f"unrecognized arguments: {' '.join(stray)}")
    if extras:
        setattr(args, dest, [*getattr(args, dest), *extras])
    args.parser = command
    return args


class _Interrupt:
    """SIGINT seen during this run. Libraries may turn the KeyboardInterrupt into another exception (an
    interrupt inside one of transformers' lazy imports surfaces as ModuleNotFoundError), so main()
    asks this flag rather than trusting the exception's type."""

    seen = False
    held = False  # while True a SIGINT is only noted, and acted on when the holding block ends

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        cls.seen = True
        if not cls.held:
            raise KeyboardInterrupt

    @classmethod
    @contextlib.contextmanager
    def held_back(cls) -> Iterator[None]:
        """Note a Ctrl-C inside the block and raise it only when the block ends.

        For native code that runs Python: torch's import initialises its C++ extensions, which import
        Python modules through pybind11, and a KeyboardInterrupt raised in one of those cannot cross
        the C++ frames: the process aborts (SIGABRT, "terminate called after throwing ...").
        """
        cls.held = True
        try:
            yield
        finally:
            cls.held = False
        if cls.seen:
            raise KeyboardInterrupt


def _interrupted() -> int:
    print("decodekit: interrupted", file=sys.stderr)
    return INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    _Interrupt.seen = False
    # Only the main thread may set handlers; a process started with SIGINT ignored (nohup, a background job of
    # a script) keeps ignoring it, as Python itself does.
    own_handler = (threading.current_thread() is threading.main_thread()
                   and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN)
    previous = signal.signal(signal.SIGINT, _Interrupt.handler) if own_handler else None
    try:
        from decodekit.errors import DecodekitError

        with _Interrupt.held_back():
            import torch  # noqa: F401  (every command needs it; imported here, where a Ctrl-C waits for it)
        args = parse_args(words)
        args.argv = words  # the exact command, for reports
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return _interrupted()
    except DecodekitError as exc:
        if _Interrupt.seen:
            return _interrupted()
        print(f"decodekit: error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        if _Interrupt.seen:
            return _interrupted()
        raise
    finally:
        if own_handler:
            signal.signal(signal.SIGINT, previous)


def positive_int(text: str, allowed: str = "an integer >= 1") -> int:
    """An argparse type: `text` as an int >= 1, else an error that says what is `allowed`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
    return value


def check_device(name: str, nproc: int = 1) -> str:
    """--device: 'cpu', or 'cuda' / 'cuda:N' naming a GPU that torch can see, and then one process (no --nproc
    N > 1, whose ranks choose their own devices); checked before any model loads."""
    import torch

    from decodekit.errors import InputError

    if name == "cpu":
        return name
    if nproc > 1:
        raise InputError(f"--device {name} runs one process; --nproc {nproc} shards the model over ranks that each "
                         f"choose their own device")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise InputError(f"--device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(match.group(1) or 0)
    if index >= count:
        raise InputError(f"--device {name!r}: torch sees {count} CUDA device(s) "
                         f"(torch {torch.__version__}, cuda {torch.version.cuda})")
    return name


def check_lengths(config: Any, max_new_tokens: int, prompts: Iterable[tuple[str, int]]) -> None:
    """Every prompt's length + --max-new-tokens must fit the model (`config`: its config, read before the
    weights load); prompts are (how to name it, its length in tokens)."""
    from decodekit.core.backend import LengthLimits

    limits = LengthLimits.of(config)
    limits.check(max_new_tokens, f"--max-new-tokens {max_new_tokens}")
    for label, length in prompts:
        limits.check(length + max_new_tokens, f"{label}: its {length} tokens + --max-new-tokens {max_new_tokens}")


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


if __name__ == "__main__":
    sys.exit(main())
