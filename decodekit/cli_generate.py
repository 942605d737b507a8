"""`decodekit generate` and `decodekit strategies`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from decodekit import cli_ranks
from decodekit.cli import check_device, check_lengths, parse_strategy_params


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s PROMPT [PROMPT ... --batch] [KEY=VALUE ...] [options]"
    parser.set_defaults(param_words="words")
    parser.add_argument("words", nargs="+", metavar="PROMPT [KEY=VALUE ...]",
                        help="the user message (it goes through the model's chat template) and strategy parameters "
                             "such as W=7 N=4 G=7, anywhere on the line: a word NAME=VALUE without spaces is a "
                             "parameter, the other word is the prompt")
    parser.add_argument("--strategy", default="greedy", help="a name from `decodekit strategies` (default: greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="default: 128")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--compare", metavar="STRATEGY", help="also run STRATEGY (e.g. greedy) and report speedup and identity")
    parser.add_argument("--no-stream", action="store_true", help="print the text at the end instead of as it is accepted")
    parser.add_argument("--batch", action="store_true",
                        help="every PROMPT word is a prompt of its own: all of them decoded together as one left-padded "
                             "batch, one forward per step; prints each row, the total tokens/s and the per-row latency")
    parser.add_argument("--device", default="cpu", metavar="cpu|cuda[:N]",
                        help="where the model runs (default: cpu); not with --nproc")
    parser.add_argument("--draft-layers", type=int, metavar="K",
                        help="for strategies that need a draft model: use the model's own first K layers with its "
                             "norm and head (default: three quarters of its layers)")
    cli_ranks.add_nproc_argument(parser)


WARM_UP_PROMPT = 512  # tokens of the prompt the warm-up runs on


def split_prompt(words: list[str], batch: bool = False) -> tuple[list[str] | str, list[str]]:
    """The prompt among the command's positional words (with `batch`, the list of prompts), and the KEY=VALUE
    parameter words."""
    from decodekit.cli import is_param_word
    from decodekit.errors import InputError

    prompts = [w for w in words if not is_param_word(w)]
    params = [w for w in words if is_param_word(w)]
    if batch and prompts:
        return prompts, params
    if len(prompts) != 1:
        found = "no prompt" if not prompts else f"{len(prompts)} prompts ({', '.join(map(repr, prompts))})"
        hint = "" if not prompts else "; to decode several prompts as one batch, add --batch"
        raise InputError(f"generate takes one PROMPT (quote it if it has spaces) and KEY=VALUE strategy parameters; "
                         f"got {found}" + (f" beside the parameters {' '.join(params)}" if params else "") + hint)
    return prompts[0], params


class _Streamer:
    """Prints text as tokens are committed, decoding the whole output so multi-token characters come out whole."""

    def __init__(self, tokenizer, enabled: bool) -> None:
        self.tokenizer, self.enabled, self.ids, self.shown = tokenizer, enabled, [], ""

    def end_line(self) -> None:
        """After an interrupt: finish the streamed line so that the shell's prompt starts on a line of its own."""
        if self.enabled and self.shown and not self.shown.endswith("\n"):
            sys.stdout.write("\n")
            sys.stdout.flush()

    def __call__(self, tokens: list[int]) -> None:
        self.ids.extend(tokens)
        if not self.enabled:
            return
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete character: wait for its next token
            return
        sys.stdout.write(text[len(self.shown):])
        sys.stdout.flush()
        self.shown = text


def run_generate(args: argparse.Namespace) -> int:
    import decodekit
    from decodekit.core import backend
    from decodekit.errors import InputError
    from decodekit.plugins.manager import get_registry

    # Everything that can be checked is checked before the model loads.
    prompt, param_words = split_prompt(args.words, args.batch)
    registry = get_registry()
    info = registry.get(args.strategy)
    params = parse_strategy_params(args.strategy, param_words)
    if args.compare is not None:
        registry.get(args.compare)
    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.draft_layers is not None and not info.capabilities.needs_draft_model:
        raise InputError(f"--draft-layers was given but strategy {args.strategy!r} does not use a draft model")
    check_device(args.device, args.nproc)
    folder = decodekit.models.default_folder()
    config = backend.load_config(folder)
    layer_count = config.get_text_config(decoder=True).num_hidden_layers
    if args.draft_layers is not None and not 1 <= args.draft_layers <= layer_count:
        raise InputError(f"--draft-layers must be in [1, {layer_count}] (the model's layer count), got {args.draft_layers}")
    if args.nproc > 1:
        backend.check_shardable(config, args.nproc)  # a rank count the model cannot split is refused here
    tokenizer = backend.load_tokenizer(folder)
    mask = None
    if args.batch:
        ids, mask = decodekit.models.chat_batch(tokenizer, prompt)  # (B, L), left-padded
        check_lengths(config, args.max_new_tokens, [(f"prompt {i + 1}", int(n)) for i, n in enumerate(mask.sum(dim=1))])
    else:
        ids = decodekit.models.chat_ids(tokenizer, prompt)  # (1, T)
        check_lengths(config, args.max_new_tokens, [("the prompt", ids.shape[1])])

    if args.nproc > 1 and not cli_ranks.is_rank():
        return cli_ranks.launch(args.argv, args.nproc)  # each rank runs this command again, from the top
    try:
        return _generate(args, info, params, param_words, tokenizer, ids, mask, layer_count)
    finally:
        cli_ranks.leave()


def _generate(args: argparse.Namespace, info: Any, params: dict, param_words: list[str], tokenizer: Any, ids: Any,
              mask: Any, layer_count: int) -> int:
    """After the checks: load the model (this rank's slice of it with --nproc), warm up, decode, report."""
    import decodekit

    tp_size = None
    if args.nproc > 1:
        cli_ranks.join(args.nproc)
        tp_size = args.nproc
    print(f"loading {decodekit.models.DEFAULT_MODEL} ({args.dtype}"
          f"{f', sharded over {tp_size} ranks' if tp_size else ''}"
          f"{f', on {args.device}' if args.device != 'cpu' else ''}) ...", file=sys.stderr)
    model, _ = decodekit.models.load_default(args.dtype, tp_size=tp_size)
    if args.device != "cpu":
        model = model.to(args.device)
        ids, mask = ids.to(args.device), (None if mask is None else mask.to(args.device))

    if info.capabilities.needs_draft_model:
        from decodekit.strategies.speculative import truncated_draft

        layers = args.draft_layers
        if layers is None:
            layers = max(1, 3 * layer_count // 4)
        # sharded, the target's slices cannot make a draft: each rank truncates a whole copy instead
        whole = decodekit.models.load_default(args.dtype)[0] if tp_size else model
        params["draft_model"] = truncated_draft(whole, layers=layers)
        print(f"draft model: the first {layers} layers of {decodekit.models.DEFAULT_MODEL}"
              f"{', whole on every rank' if tp_size else ''}", file=sys.stderr)

    if args.batch:
        return _generate_batch(args, model, tokenizer, ids, mask, params, param_words)

    # Warm-up: each strategy that will be timed runs a few tokens first, on the prompt (at most its first 512
    # tokens), so first-call costs (kernel set-up per shape, the cost model's measurement) stay out of the timing.
    for name, extra in ((args.strategy, params), *(((args.compare, {}),) if args.compare else ())):
        decodekit.generate(model, ids[:, :WARM_UP_PROMPT], name, max_new_tokens=min(16, args.max_new_tokens), **extra)

    streamer = _Streamer(tokenizer, enabled=not args.no_stream)
    try:
        out = decodekit.generate(model, ids, args.strategy, max_new_tokens=args.max_new_tokens, on_step=streamer,
                                 **params)
    except KeyboardInterrupt:
        streamer.end_line()
        raise
    if args.no_stream:
        print(tokenizer.decode(streamer.ids, skip_special_tokens=True), end="")
    print()
    label = args.strategy + (" " + " ".join(param_words) if param_words else "")
    print(f"[{label}] {out.stats.summary()}", file=sys.stderr)
    if args.compare is not None:
        base = decodekit.generate(model, ids, args.compare, max_new_tokens=args.max_new_tokens)
        print(f"[{args.compare}] {base.stats.summary()}", file=sys.stderr)
        print(comparison(args.compare, out, base), file=sys.stderr)
    return 0


def _generate_batch(args: argparse.Namespace, model: Any, tokenizer: Any, ids: Any, mask: Any, params: dict,
                    param_words: list[str]) -> int:
    """Several prompts as one batch: each row's text, then the batch's throughput (and the comparison's)."""
    import decodekit

    pad = decodekit.models.pad_id(tokenizer)
    runs = [(args.strategy, params)] + ([(args.compare, {})] if args.compare else [])
    for name, extra in runs:  # warm-up, as for one prompt
        decodekit.generate(model, ids[:, -WARM_UP_PROMPT:], name, attention_mask=mask[:, -WARM_UP_PROMPT:],
                           pad_token_id=pad, max_new_tokens=min(16, args.max_new_tokens), **extra)
    outs = [decodekit.generate(model, ids, name, attention_mask=mask, pad_token_id=pad,
                               max_new_tokens=args.max_new_tokens, **extra) for name, extra in runs]
    out = outs[0]
    for row in range(ids.shape[0]):
        text = tokenizer.decode(out.sequences[row, ids.shape[1]:], skip_special_tokens=True)
        print(f"--- prompt {row + 1} ---\n{text}")
    label = args.strategy + (" " + " ".join(param_words) if param_words else "")
    for (name, _), result in zip(runs, outs):
        tag = label if result is out else name
        print(f"[{tag}] batch of {ids.shape[0]}: {result.stats.summary()}; every row's latency "
              f"{result.stats.seconds:.2f} s", file=sys.stderr)
    if args.compare is not None:
        same = [outs[0].sequences[r].tolist() == outs[1].sequences[r].tolist() for r in range(ids.shape[0])]
        speedup = outs[0].stats.tokens_per_second / outs[1].stats.tokens_per_second
        print(f"speedup over {args.compare} (total tokens/s): {speedup:.2f}x; rows identical: {sum(same)} of "
              f"{len(same)}" + ("" if all(same) else f" (differing rows: {[r + 1 for r, s in enumerate(same) if not s]})"),
              file=sys.stderr)
    return 0


def comparison(baseline: str, out: Any, base: Any) -> str:
    """One line: speed as the ratio of tokens/s (what `decodekit bench` reports), and whether the outputs match.

    A ratio of seconds would flatter whichever output is shorter; tokens/s compares the work done.
    """
    from decodekit.core.sequences import first_difference

    def rate(stats: Any) -> float:
        return stats.new_tokens / stats.seconds if stats.seconds > 0 else float("nan")

    speedup = rate(out.stats) / rate(base.stats)
    got, want = out.sequences[0].tolist(), base.sequences[0].tolist()
    where = first_difference(got, want)
    prompt_length = out.sequences.shape[1] - out.stats.new_tokens
    same = "yes" if where is None else f"NO (they part at new token {where - prompt_length})"
    return f"speedup over {baseline} (tokens/s): {speedup:.2f}x; outputs identical: {same}"


def add_strategies_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_strategies(args: argparse.Namespace) -> int:
    from decodekit.plugins.manager import get_registry

    registry = get_registry()
    for name in registry.names():
        info = registry.get(name)
        caps = info.capabilities
        flags = ", ".join(f for f, on in (("exact", caps.exact), ("sampling", caps.supports_sampling),
                                         ("needs draft model", caps.needs_draft_model)) if on)
        origin = "" if info.plugin == "decodekit.strategies" else f"  [plugin: {info.plugin}]"
        print(f"{name}: {info.cls.description} ({flags}){origin}")
        for p in info.params:
            print(f"    {p.name}={p.default!r}  ({p.allowed})  {p.help}")
    for plugin, error in registry.failures.items():
        print(f"(plugin {plugin!r} failed to register: {error})")
    return 0
