"""Running every method on every prompt, interleaved prompt by prompt, after a warm-up.

All methods run in one process on the same prompts. For each prompt every method runs once (the
order rotates from prompt to prompt so that no method always runs first); the machine's drift hits
all of them alike. hf-greedy's output is the reference every other method's tokens are compared with.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import attrs
import torch

from decodekit.bench import memory
from decodekit.bench.divergence import Margins
from decodekit.bench.methods import REFERENCE, MethodSpec, RunResult, runner_for
from decodekit.bench.questions import Question
from decodekit.errors import InputError


@attrs.frozen(kw_only=True)
class Prompt:
    """One prompt as token ids, with where it came from (a single-turn input, or one turn of a question)."""

    question_id: int | str
    category: str
    turn: int = 0
    input_ids: tuple[int, ...] = attrs.field(converter=tuple)


@attrs.frozen(kw_only=True)
class Record:
    """One method on one prompt."""

    method: str
    question_id: int | str
    category: str
    turn: int
    prompt_tokens: int
    new_tokens: int
    seconds: float
    forwards: int | None
    tokens_computed: int | None
    identical: bool
    peak_memory_bytes: int | None
    memory_added_bytes: int | None
    # where the output parts from hf-greedy's (decodekit.bench.divergence): the first differing new token,
    # greedy's top-2 logit margin there, and whether that margin is a near-tie (all None when identical)
    first_difference: int | None = None
    margin: float | None = None
    near_tie: bool | None = None


@attrs.frozen(kw_only=True)
class BenchRun:
    """Everything measured: the methods (in order), every record, and how the run was set up."""

    methods: tuple[MethodSpec, ...] = attrs.field(converter=tuple)
    records: tuple[Record, ...] = attrs.field(converter=tuple)
    max_new_tokens: int
    multi_turn: bool
    device: str
    memory_method: str
    prompts_planned: int
    prompts_run: int
    time_limit: float | None = None
    interrupted: bool = False  # Ctrl-C ended the run: the records cover the prompts that finished before it
    near_tie_margin: float | None = None  # the top-2 margin below which a difference is a near-tie (divergence.py)


def _check_methods(specs: Sequence[MethodSpec]) -> None:
    if not specs:
        raise InputError("no methods to benchmark")
    if not any(s.label == REFERENCE for s in specs):
        raise InputError(f"the methods must include {REFERENCE!r}, the reference for outputs and speedups")


def _to_ids(tokens: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([list(tokens)], dtype=torch.long, device=device)  # (1, T)


def _resolve_drafts(specs: Sequence[MethodSpec], draft_models: Mapping[str, Any] | None,
                    load: Callable[[str], Any] | None) -> dict[str, Any]:
    drafts = dict(draft_models or {})
    for spec in specs:
        if spec.draft is not None and spec.draft not in drafts:
            if load is None:
                raise InputError(f"method {spec.label!r} names draft {spec.draft!r}, which was not given in draft_models")
            drafts[spec.draft] = load(spec.draft)
    return drafts


def _run_one(spec: MethodSpec, model: Any, ids: torch.Tensor, max_new_tokens: int, drafts: Mapping[str, Any],
             device: torch.device) -> tuple[RunResult, int | None, int | None]:
    run = runner_for(spec)
    draft = drafts.get(spec.draft) if spec.draft is not None else None
    return memory.measure(lambda: run(spec, model, ids, max_new_tokens, draft), device)


def _rotated(specs: Sequence[MethodSpec], index: int) -> list[MethodSpec]:
    shift = index % len(specs)
    return list(specs[shift:]) + list(specs[:shift])


def warm_up(specs: Sequence[MethodSpec], model: Any, prompt: Prompt, drafts: Mapping[str, Any],
            max_new_tokens: int) -> None:
    """Run every method once, untimed, for as many tokens as the timed runs: first-call costs stay out.

    The full length, because a multi-token strategy's step width changes from step to step, and a
    short warm-up meets only a few of the input shapes the timed runs will.
    """
    device = model.device
    ids = _to_ids(prompt.input_ids, device)
    for spec in specs:
        _run_one(spec, model, ids, max_new_tokens, drafts, device)


def run_prompt(specs: Sequence[MethodSpec], model: Any, prompt: Prompt, max_new_tokens: int,
               drafts: Mapping[str, Any], order_index: int = 0,
               tick: Callable[[str], None] | None = None, margins: Margins | None = None
               ) -> tuple[list[Record], RunResult]:
    """Every method once on one prompt; records (in spec order) and the reference's result.

    An output that differs from the reference's is classified afterwards, outside every timed call
    (`margins`: a decodekit.bench.divergence.Margins of the model; None makes one).
    """
    device = model.device
    ids = _to_ids(prompt.input_ids, device)
    results: dict[str, tuple[RunResult, int | None, int | None]] = {}
    for spec in _rotated(specs, order_index):
        results[spec.label] = _run_one(spec, model, ids, max_new_tokens, drafts, device)
        if tick is not None:
            tick(spec.label)
    reference = results[REFERENCE][0]
    margins = margins if margins is not None else Margins(model)
    records = []
    for spec in specs:
        result, peak, added = results[spec.label]
        found = margins.compare(prompt.input_ids, reference.new_tokens, result.new_tokens)
        records.append(Record(
            method=spec.label, question_id=prompt.question_id, category=prompt.category, turn=prompt.turn,
            prompt_tokens=len(prompt.input_ids), new_tokens=len(result.new_tokens), seconds=result.seconds,
            forwards=result.forwards, tokens_computed=result.tokens_computed,
            identical=result.new_tokens == reference.new_tokens, peak_memory_bytes=peak,
            memory_added_bytes=added, first_difference=found.position, margin=found.margin,
            near_tie=found.near_tie))
    return records, reference


def _question_prompts(questions: Sequence[Question], tokenizer: Any, multi_turn: bool
                      ) -> Iterator[tuple[Prompt, Callable[[RunResult], None] | None]]:
    """Prompts from questions through the chat template; later turns follow the reference's answers."""
    from decodekit.models import chat_ids

    for question in questions:
        messages: list[dict[str, str]] = []
        turns = question.turns if multi_turn else question.turns[:1]
        for index, text in enumerate(turns):
            messages.append({"role": "user", "content": text})
            ids = chat_ids(tokenizer, list(messages))[0].tolist()
            prompt = Prompt(question_id=question.question_id, category=question.category, turn=index, input_ids=ids)

            def answered(reference: RunResult, messages: list = messages) -> None:
                answer = tokenizer.decode(list(reference.new_tokens), skip_special_tokens=True)
                messages.append({"role": "assistant", "content": answer})

            yield prompt, (answered if index + 1 < len(turns) else None)


def _prompt_count(questions: Sequence[Question] | None, prompts: Sequence[Prompt] | None, multi_turn: bool) -> int:
    if prompts is not None:
        return len(prompts)
    return sum(len(q.turns) if multi_turn else 1 for q in questions or ())


def as_prompts(items: Sequence[Any]) -> list[Prompt]:
    """Prompts from Prompt objects or plain token-id lists (category 'prompts', ids 0, 1, ...)."""
    out = []
    for index, item in enumerate(items):
        if isinstance(item, Prompt):
            out.append(item)
        elif isinstance(item, torch.Tensor):
            out.append(Prompt(question_id=index, category="prompts", input_ids=item.reshape(-1).tolist()))
        elif isinstance(item, Sequence) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            out.append(Prompt(question_id=index, category="prompts", input_ids=list(item)))
        else:
            raise InputError(f"prompts[{index}] must be a non-empty list of token ids or a Prompt, got {item!r:.60}")
    if not out:
        raise InputError("prompts is empty")
    return out


def out_of_time(model: Any, elapsed: float, done: int, time_limit: float | None) -> bool:
    """Whether no further prompt (or batch) should start: the elapsed time plus the mean time of one so far
    would pass `time_limit`. On a model sharded over several ranks it is rank 0's clock that decides, for
    every rank (the ranks run each forward together, so they must stop together)."""
    from decodekit.core.backend import model_ranks

    over = time_limit is not None and done > 0 and elapsed + elapsed / done > time_limit
    ranks = model_ranks(model) if time_limit is not None else None
    return bool(ranks.agree(over)) if ranks is not None else over


def run(model: Any, specs: Sequence[MethodSpec], *, questions: Sequence[Question] | None = None,
        prompts: Sequence[Any] | None = None, tokenizer: Any = None, max_new_tokens: int = 128,
        multi_turn: bool = False, warmup: bool = True, progress: bool = True,
        draft_models: Mapping[str, Any] | None = None, load_draft: Callable[[str], Any] | None = None,
        time_limit: float | None = None) -> BenchRun:
    """Benchmark `specs` on `model`: questions (through the tokenizer's chat template) or token-id prompts.

    time_limit (seconds): start no further prompt once the elapsed time plus the mean time of a prompt
    so far would pass it; every prompt that starts runs every method, so figures stay comparable.
    Ctrl-C (KeyboardInterrupt) stops the run at once; the prompt it cut is dropped, the finished ones are
    returned with interrupted=True. With no prompt finished there is nothing to return and it propagates.
    """
    from tqdm.auto import tqdm

    _check_methods(specs)
    if (questions is None) == (prompts is None):
        raise InputError("give exactly one of questions= (with tokenizer=) or prompts= (token-id lists)")
    if questions is not None and tokenizer is None:
        raise InputError("questions= need tokenizer= to apply the chat template; or pass prompts= as token ids")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    drafts = _resolve_drafts(specs, draft_models, load_draft)
    source = (((p, None) for p in as_prompts(prompts)) if prompts is not None
              else _question_prompts(questions, tokenizer, multi_turn))
    if time_limit is not None and (isinstance(time_limit, bool) or not time_limit > 0):
        raise InputError(f"time_limit must be a number of seconds > 0, got {time_limit!r}")
    planned = _prompt_count(questions, None if prompts is None else prompts, multi_turn)
    margins = Margins(model)
    records: list[Record] = []
    done = 0
    began = time.perf_counter()
    bar = tqdm(total=planned * len(specs), file=sys.stderr, disable=not progress, unit="run", dynamic_ncols=True)
    interrupted = False
    try:
        for index, (prompt, answered) in enumerate(source):
            if out_of_time(model, time.perf_counter() - began, done, time_limit):
                bar.write(f"time limit {time_limit:.0f} s: stopping after {done} of {planned} prompts", file=sys.stderr)
                break
            if index == 0 and warmup:
                bar.set_description("warm-up")
                warm_up(specs, model, prompt, drafts, max_new_tokens)

            def tick(label: str, prompt: Prompt = prompt) -> None:
                bar.set_description(f"{prompt.category}:{prompt.question_id} {label}")
                bar.update(1)

            got, reference = run_prompt(specs, model, prompt, max_new_tokens, drafts, index, tick, margins)
            records.extend(got)
            done += 1
            if answered is not None:
                answered(reference)
    except KeyboardInterrupt:
        if not done:
            raise
        interrupted = True
    finally:
        bar.close()
    return BenchRun(methods=specs, records=records, max_new_tokens=max_new_tokens, multi_turn=multi_turn,
                    device=str(model.device), memory_method=memory.method_name(model.device),
                    prompts_planned=planned, prompts_run=done, time_limit=time_limit,
                    interrupted=interrupted, near_tie_margin=margins.threshold)
