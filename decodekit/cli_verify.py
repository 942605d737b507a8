"""`decodekit verify`: is a strategy exact on real prompts? The regression suite behind plugins and CI.

For every prompt it decodes greedily and with the strategy, then reports "identical" or the first
differing new token, with greedy's top-2 logit margin there:

- a *near-tie*: the margin is below NEAR_TIE_MARGIN[dtype]. Greedy's two best tokens are so close
  that a different (equally correct) order of floating-point additions, as in a multi-token forward,
  can swap them. Reported, but not a failure.
- a *real mismatch*: the margin is at least that. No rounding explains it: the strategy is wrong.

--record FILE writes the greedy outputs (golden outputs, one JSON line per prompt, with the prompt's
token ids) while verifying; --check FILE later verifies a strategy against them without running
greedy again, so a CI job catches a change in exactness (or in greedy itself, which shows as
mismatches for every strategy). Exit status: 0 when no prompt has a real mismatch, 1 otherwise,
2 for a bad command line.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

import attrs
import torch

from decodekit.bench.divergence import NEAR_TIE_MARGIN, Margins, top2_margin  # noqa: F401  (top2_margin: imported from here by older callers)
from decodekit.bench.questions import ENV_QUESTIONS as SPEC_BENCH_ENV
from decodekit.bench.questions import default_questions_path, read_questions
from decodekit.cli import parse_strategy_params
from decodekit.fileio import write_text

DEFAULT_MAX_NEW_TOKENS = 64


@attrs.frozen(kw_only=True)
class Prompt:
    question_id: Any
    category: str
    text: str | None = None
    input_ids: tuple[int, ...] | None = None  # known when read from a golden file
    golden: tuple[int, ...] | None = None  # greedy's new tokens, from a golden file


def select(rows: list[Prompt], per_category: int | None, limit: int | None) -> list[Prompt]:
    """The first `per_category` rows of each category (in file order), or the first `limit` rows."""
    if limit is not None:
        return rows[:limit]
    counts: dict[str, int] = {}
    out = []
    for row in rows:
        counts[row.category] = counts.get(row.category, 0) + 1
        if counts[row.category] <= per_category:
            out.append(row)
    return out


def _read_golden_lines(path: Path) -> list[dict]:
    from decodekit.errors import InputError

    if not path.is_file():
        raise InputError(f"golden file {str(path)!r} does not exist; write one with --record")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number} is not a JSON line: {exc}") from None
    return rows


def load_questions(path: Path) -> list[Prompt]:
    """Spec-Bench rows (question_id, category, turns), read by the bench's reader: the first turn is the prompt."""
    return [Prompt(question_id=q.question_id, category=q.category, text=q.turns[0]) for q in read_questions(path)]


def load_golden(path: Path) -> tuple[list[Prompt], dict[str, Any]]:
    """Golden records -> prompts with their token ids and greedy outputs, and the settings they share."""
    from decodekit.errors import InputError

    records = _read_golden_lines(path)
    if not records:
        raise InputError(f"golden file {str(path)!r} holds no records; write one with --record")
    settings = {k: records[0].get(k) for k in ("model", "dtype", "max_new_tokens")}
    prompts = []
    for number, record in enumerate(records, 1):
        for key, value in settings.items():
            if record.get(key) != value:
                raise InputError(f"{path}:{number} has {key}={record.get(key)!r} but line 1 has {value!r}; "
                                 f"a golden file holds one model, dtype and max_new_tokens")
        prompts.append(Prompt(question_id=record["question_id"], category=record["category"],
                              input_ids=tuple(record["input_ids"]), golden=tuple(record["greedy"])))
    return prompts, settings


@functools.lru_cache(maxsize=2)
def load_model(spec: str, dtype: str) -> tuple[Any, Any]:
    """`default` (the offline default model) or a local HuggingFace model folder -> (model, tokenizer)."""
    from decodekit.bench.api import load_model as load

    return load(spec, dtype)


def model_folder(spec: str) -> Path:
    """Where `default` or a model folder's files are (checked to be a model folder), before any weights load."""
    from decodekit.bench.api import model_folder as folder

    return folder(spec)


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    """A prompt through the chat template when the tokenizer has one, else as plain text -> (1, T)."""
    import decodekit

    if getattr(tokenizer, "chat_template", None):
        return decodekit.models.chat_ids(tokenizer, text)
    return torch.tensor([tokenizer(text)["input_ids"]], dtype=torch.long)  # (1, T)


def encode_checked(model_spec: str, rows: list[Prompt], max_new_tokens: int) -> list[torch.Tensor]:
    """Every prompt as (1, T) ids, each checked against the model's length limits: from its config and
    tokenizer alone, before its weights load."""
    from decodekit.cli import check_lengths
    from decodekit.core.backend import load_config, load_tokenizer

    folder = model_folder(model_spec)
    tokenizer = None if all(row.input_ids is not None for row in rows) else load_tokenizer(folder)
    out = [torch.tensor([row.input_ids], dtype=torch.long) if row.input_ids is not None
           else encode(tokenizer, row.text) for row in rows]  # each (1, T)
    check_lengths(load_config(folder), max_new_tokens,
                  ((f"prompt q{row.question_id} ({row.category})", ids.shape[1]) for row, ids in zip(rows, out)))
    return out


@attrs.frozen(kw_only=True)
class Verdict:
    """One prompt's outcome: status is 'identical', 'near-tie' or 'mismatch'."""

    status: str
    position: int | None = None
    greedy_token: int | None = None
    strategy_token: int | None = None
    margin: float | None = None
    text: str = ""


def judge(model: Any, tokenizer: Any, dtype: str, prompt_ids: list[int], greedy: list[int], output: list[int],
          threshold: float) -> Verdict:
    """Compare the strategy's new tokens with greedy's; at the first difference, measure greedy's margin."""
    found = Margins(model, threshold).compare(prompt_ids, greedy, output)
    at = found.position
    if at is None:
        return Verdict(status="identical", text=f"identical ({len(greedy)} new tokens)")

    def shown(tokens: list[int]) -> str:
        if at >= len(tokens):
            return f"<stopped after {len(tokens)} tokens>"
        return f"{tokens[at]} {tokenizer.decode([tokens[at]])!r}" if tokenizer is not None else str(tokens[at])

    where = f"differs at new token {at}: greedy {shown(greedy)}, strategy {shown(output)}"
    if found.margin is None:
        return Verdict(status="mismatch", position=at, text=f"{where}; one output stopped early: REAL MISMATCH")
    near = bool(found.near_tie)
    verdict = (f"{where}; greedy top-2 margin {found.margin:.3g} {'<' if near else '>='} {threshold:g} ({dtype}): "
               + ("near-tie" if near else "REAL MISMATCH"))
    return Verdict(status="near-tie" if near else "mismatch", position=at, greedy_token=greedy[at],
                   strategy_token=output[at], margin=found.margin, text=verdict)


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(param_words="params")
    parser.add_argument("params", nargs="*", metavar="KEY=VALUE",
                        help="strategy parameters, e.g. max_ngram=2, anywhere on the line")
    parser.add_argument("--strategy", required=True, help="a name from `decodekit strategies`")
    parser.add_argument("--model", default=None,
                        help="'default' (SmolLM2-135M-Instruct, offline) or a local HuggingFace model folder "
                             "(default: default, or the golden file's with --check)")
    parser.add_argument("--draft-model", default=None, metavar="MODEL",
                        help="for strategies that need a draft model: 'default' or a local model folder "
                             "with the same vocabulary (loaded in the same dtype)")
    parser.add_argument("--questions", type=Path, default=None,
                        help=f"Spec-Bench style JSONL (question_id, category, turns); default: ${SPEC_BENCH_ENV}, "
                             f"else ../shared/data/spec_bench/question.jsonl beside the repository")
    choose = parser.add_mutually_exclusive_group()
    choose.add_argument("--per-category", type=int, metavar="K", help="the first K prompts of each category (default: 1)")
    choose.add_argument("--limit", type=int, metavar="N", help="the first N prompts of the file")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"default: {DEFAULT_MAX_NEW_TOKENS}, or the golden file's with --check")
    parser.add_argument("--dtype", default=None, choices=sorted(NEAR_TIE_MARGIN),
                        help="default: float32, or the golden file's with --check")
    golden = parser.add_mutually_exclusive_group()
    golden.add_argument("--record", type=Path, metavar="GOLDEN.jsonl", help="write greedy's outputs as golden outputs")
    golden.add_argument("--check", type=Path, metavar="GOLDEN.jsonl",
                        help="compare the strategy with golden outputs written by --record (greedy is not rerun)")


def _settle(args: argparse.Namespace, golden: dict[str, Any] | None) -> tuple[str, str, int]:
    """model, dtype and max_new_tokens: from the command line, else the golden file, else the defaults."""
    from decodekit.errors import InputError

    chosen = {"model": args.model, "dtype": args.dtype, "max_new_tokens": args.max_new_tokens}
    defaults = {"model": "default", "dtype": "float32", "max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
    out = {}
    for key, value in chosen.items():
        if golden is not None:
            if value is not None and value != golden[key]:
                flag = "--" + key.replace("_", "-")
                raise InputError(f"{flag} {value} differs from the golden file's {key} {golden[key]!r}; "
                                 f"drop {flag} or record a new golden file")
            value = golden[key]
        out[key] = defaults[key] if value is None else value
    if out["dtype"] not in NEAR_TIE_MARGIN:
        raise InputError(f"dtype must be one of {', '.join(sorted(NEAR_TIE_MARGIN))}, got {out['dtype']!r}")
    if not isinstance(out["max_new_tokens"], int) or out["max_new_tokens"] < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {out['max_new_tokens']!r}")
    return out["model"], out["dtype"], out["max_new_tokens"]


def run_verify(args: argparse.Namespace) -> int:
    import decodekit
    from decodekit.errors import InputError
    from decodekit.plugins.manager import get_registry

    registry = get_registry()
    info = registry.get(args.strategy)
    params = parse_strategy_params(args.strategy, args.params)
    if not info.capabilities.exact:
        raise InputError(f"strategy {args.strategy!r} is not declared exact (capabilities.exact=False); "
                         f"verify checks that a strategy's output equals greedy")
    if info.capabilities.needs_draft_model and args.draft_model is None:
        raise InputError(f"strategy {args.strategy!r} needs a draft model; pass --draft-model default "
                         f"or --draft-model PATH (a model with the same vocabulary)")
    if args.draft_model is not None and not info.capabilities.needs_draft_model:
        raise InputError(f"--draft-model was given but strategy {args.strategy!r} does not use a draft model")
    for flag, value in (("--per-category", args.per_category), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    if args.check is not None:
        if args.questions is not None:
            raise InputError("--check takes its prompts from the golden file; drop --questions")
        rows, golden = load_golden(args.check)
    else:
        rows, golden = load_questions(args.questions or default_questions_path()), None
    rows = select(rows, args.per_category if args.per_category is not None else 1 if args.limit is None else None,
                  args.limit)
    model_spec, dtype, max_new_tokens = _settle(args, golden)
    threshold = NEAR_TIE_MARGIN[dtype]

    prompt_ids = encode_checked(model_spec, rows, max_new_tokens)
    if args.draft_model is not None:
        model_folder(args.draft_model)  # a wrong path fails before the target loads

    label = args.strategy + (" " + " ".join(args.params) if args.params else "")
    print(f"verify {label} against greedy: {len(rows)} prompts, model {model_spec} ({dtype}), "
          f"max_new_tokens {max_new_tokens}" + (f", golden {args.check}" if args.check else ""), flush=True)
    model, tokenizer = load_model(model_spec, dtype)
    if args.draft_model is not None:
        params = {**params, "draft_model": load_model(args.draft_model, dtype)[0]}
    records = []
    counts = {"identical": 0, "near-tie": 0, "mismatch": 0}
    for row, ids in zip(rows, prompt_ids):
        n = ids.shape[1]
        if row.golden is not None:
            greedy = list(row.golden)
        else:
            greedy = decodekit.generate(model, ids, "greedy", max_new_tokens=max_new_tokens).sequences[0, n:].tolist()
        out = decodekit.generate(model, ids, args.strategy, max_new_tokens=max_new_tokens, **params)
        output = out.sequences[0, n:].tolist()
        verdict = judge(model, tokenizer, dtype, ids[0].tolist(), greedy, output, threshold)
        counts[verdict.status] += 1
        tag = {"identical": "ok", "near-tie": "near-tie", "mismatch": "MISMATCH"}[verdict.status]
        print(f"{tag:<9} q{row.question_id} {row.category:<15} {verdict.text}; "
              f"{out.stats.mean_accepted:.2f} tokens/step", flush=True)
        records.append({"question_id": row.question_id, "category": row.category, "model": model_spec,
                        "dtype": dtype, "max_new_tokens": max_new_tokens, "input_ids": ids[0].tolist(),
                        "greedy": greedy})
    if args.record is not None:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.record, "".join(json.dumps(r) + "\n" for r in records))
        print(f"wrote {len(records)} golden outputs (greedy) to {args.record}")
    print(f"{len(rows)} prompts: {counts['identical']} identical, {counts['near-tie']} near-ties, "
          f"{counts['mismatch']} real mismatches (near-tie: greedy top-2 logit margin < {threshold:g} in {dtype} "
          f"at the first differing token)")
    return 1 if counts["mismatch"] else 0

