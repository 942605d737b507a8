"""Methods to benchmark, parsed from strings, and how each one runs a prompt.

A method spec is `NAME` or `NAME:KEY=VALUE,KEY=VALUE`:
- a decodekit strategy from the registry (`greedy`, `lookahead:W=7,N=4,G=7`, a plugin's strategy);
  its parameters are validated by the registry, so a typo fails before any model is loaded.
  A strategy that needs a draft model takes `draft=default|PATH` (`speculative:gamma=4,draft=PATH`).
- a HuggingFace peer: `hf-greedy` (model.generate(do_sample=False)), `hf-prompt-lookup`
  (prompt_lookup_num_tokens; `hf-prompt-lookup:num_tokens=10,max_ngram=2`) and `hf-assisted`
  (assisted generation with a draft model: `hf-assisted:draft=PATH`).

Every method runs one prompt (1, T) or, in a batch run, one left-padded batch (B, T) per call.
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import attrs
import torch

from decodekit.bench.memory import sync
from decodekit.core.params import ParamInfo, describe, param, parse_value
from decodekit.errors import InputError, StrategyParameterError, UnknownStrategyError
from decodekit.plugins.manager import get_registry

REFERENCE = "hf-greedy"
DRAFT_KEY = "draft"


@attrs.frozen(kw_only=True)
class HFGreedyParams:
    """model.generate(do_sample=False): the reference every method is compared with."""


@attrs.frozen(kw_only=True)
class HFPromptLookupParams:
    num_tokens: int = param(10, ge=1, help="prompt_lookup_num_tokens: tokens copied from the prompt per step")
    max_ngram: int = param(2, ge=1, help="max_matching_ngram_size: longest n-gram matched in the prompt")


@attrs.frozen(kw_only=True)
class HFAssistedParams:
    draft: str = param("", help="the draft model: 'default' or a local HuggingFace folder (required)")
    num_assistant_tokens: int = param(5, ge=1, help="draft tokens proposed per step (initial value)")


HF_METHODS: Mapping[str, type] = MappingProxyType({
    "hf-greedy": HFGreedyParams,
    "hf-prompt-lookup": HFPromptLookupParams,
    "hf-assisted": HFAssistedParams,
})

# transformers 5.x runs both through its assisted decoding, which raises "assisted generate is only
# supported for batch_size = 1" once the batch is prepared (GenerationMixin._assisted_decoding)
HF_BATCH_ONE_ONLY = frozenset({"hf-prompt-lookup", "hf-assisted"})


@attrs.frozen(kw_only=True)
class MethodSpec:
    """A parsed, validated method: what `--strategies` and the Python API take.

    label: the spec as written (how tables name the method); family: "decodekit" or "hf";
    params: typed keywords (the strategy's, or the HF peer's); draft: 'default', a path or None.
    """

    label: str
    name: str
    family: str = attrs.field(validator=attrs.validators.in_(("decodekit", "hf")))
    params: Mapping[str, Any] = attrs.field(converter=lambda p: MappingProxyType(dict(p)))
    draft: str | None = None

    def canonical(self) -> tuple:
        """What the method runs, defaults filled in: equal for 'jacobi' and 'jacobi:block_size=8'."""
        if self.family == "hf":
            return ("hf", self.name, HF_METHODS[self.name](**self.params), self.draft)
        return ("decodekit", self.name, get_registry().make_params(self.name, self.params), self.draft)

    @property
    def exact(self) -> bool:
        """Whether the method promises greedy's output (every HF peer here does, with do_sample=False)."""
        if self.family == "hf":
            return True
        return get_registry().get(self.name).capabilities.exact


def _split(text: str) -> tuple[str, list[str]]:
    if not isinstance(text, str) or not text.strip():
        raise StrategyParameterError(f"a method spec must be a non-empty string like 'lookahead:W=7,N=4', got {text!r}")
    name, _, rest = text.strip().partition(":")
    items = [item.strip() for item in rest.split(",") if item.strip()] if rest else []
    for item in items:
        key, sep, _value = item.partition("=")
        if not sep or not key.strip():
            raise StrategyParameterError(f"method {text!r}: parameters are KEY=VALUE separated by commas, got {item!r}")
    return name.strip(), items


def _typed(owner: str, infos: Sequence[ParamInfo], items: Sequence[str], fields_cls: type) -> dict[str, Any]:
    """KEY=VALUE words -> typed values, validated by `fields_cls` (an attrs class of param() fields)."""
    from decodekit.core.registry import _suggest

    by_name = {p.name: p for p in infos}
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in by_name:
            allowed = ", ".join(by_name) or "none"
            raise StrategyParameterError(
                f"unknown parameter {key!r} for {owner!r}{_suggest(key, list(by_name))} (parameters: {allowed})")
        if key in out:
            raise StrategyParameterError(f"parameter {key!r} given twice for {owner!r}")
        try:
            out[key] = parse_value(by_name[key], value)
        except ValueError as exc:
            raise StrategyParameterError(f"{owner}: {exc}") from None
    try:
        fields_cls(**out)
    except (TypeError, ValueError) as exc:
        raise StrategyParameterError(f"{owner}: {exc}") from None
    return out


def _parse_hf(text: str, name: str, items: list[str]) -> MethodSpec:
    params_cls = HF_METHODS[name]
    params = _typed(name, describe(params_cls), items, params_cls)
    draft = params.pop(DRAFT_KEY, None)
    if name == "hf-assisted" and not draft:
        raise StrategyParameterError("hf-assisted needs a draft model: hf-assisted:draft=default or draft=PATH")
    return MethodSpec(label=text, name=name, family="hf", params=params, draft=draft)


def _parse_strategy(text: str, name: str, items: list[str]) -> MethodSpec:
    registry = get_registry()
    try:
        info = registry.get(name)
    except UnknownStrategyError as exc:
        peers = ", ".join(HF_METHODS)
        raise UnknownStrategyError(f"method {text!r}: {exc}; HuggingFace peers: {peers}") from None
    draft = None
    rest = []
    for item in items:
        key, _, value = (part.strip() for part in item.partition("="))
        if key == DRAFT_KEY and info.capabilities.needs_draft_model:
            draft = value
        else:
            rest.append(item)
    if info.capabilities.needs_draft_model and not draft:
        raise StrategyParameterError(f"strategy {name!r} needs a draft model: {name}:draft=default or draft=PATH")
    params = _typed(name, info.params, rest, info.cls.Params)
    registry.make_params(name, params)  # the registry's own validation, exactly as generate() does it
    return MethodSpec(label=text, name=name, family="decodekit", params=params, draft=draft)


def parse_method(text: str) -> MethodSpec:
    """'lookahead:W=7,N=4,G=7' -> a validated MethodSpec; errors name the parameter, value and what is allowed."""
    name, items = _split(text)
    label = text.strip()
    if name in HF_METHODS:
        return _parse_hf(label, name, items)
    return _parse_strategy(label, name, items)


def default_method_texts(batch_size: int = 1) -> list[str]:
    """hf-greedy, greedy, hf-prompt-lookup, then every registered exact strategy that needs no draft model;
    for batches (batch_size > 1) without the HF methods that run one prompt at a time."""
    registry = get_registry()
    texts = [REFERENCE, "greedy", "hf-prompt-lookup"]
    for name in registry.names():
        caps = registry.get(name).capabilities
        if caps.exact and not caps.needs_draft_model and name not in texts:
            texts.append(name)
    if batch_size > 1:
        texts = [t for t in texts if t not in HF_BATCH_ONE_ONLY]
    return texts


def check_batch_size(specs: Sequence[MethodSpec], batch_size: int) -> None:
    """Refuse, before any work, a method that cannot decode a batch of `batch_size` prompts in one call."""
    for spec in specs:
        if batch_size > 1 and spec.family == "hf" and spec.name in HF_BATCH_ONE_ONLY:
            raise InputError(f"method {spec.label!r} cannot run batch size {batch_size}: transformers' assisted "
                             f"generation (prompt lookup, assistant models) decodes batch size 1 only; drop the "
                             f"method or use --batch-size 1")


def parse_methods(texts: Sequence[str] | None) -> list[MethodSpec]:
    """Parse every spec (all before any work); hf-greedy, the reference, is added first when missing."""
    specs = [parse_method(t) for t in (texts or default_method_texts())]
    labels = [s.label for s in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise StrategyParameterError(f"method(s) given twice: {', '.join(duplicates)}")
    if not any(s.label == REFERENCE for s in specs):
        specs.insert(0, parse_method(REFERENCE))
    return specs


# -- running one prompt ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RunResult:
    """One method on one prompt: the new tokens and what producing them cost.

    forwards: forward passes of the target model, prefill included (None if not counted).
    tokens_computed: tokens fed through the target model after the prefill (None if not counted).
    """

    new_tokens: tuple[int, ...] = attrs.field(converter=tuple)
    seconds: float
    forwards: int | None
    tokens_computed: int | None


@attrs.define(eq=False)
class ForwardCounter:
    """Counts the target model's forward calls and their input tokens through a forward pre-hook.

    A hook is PyTorch's public API for observing a module's calls: the model is not patched.
    """

    forwards: int = 0
    tokens_computed: int = 0

    def __call__(self, _module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        width = int(ids.shape[-1]) if isinstance(ids, torch.Tensor) else 0
        if self.forwards > 0:  # the prefill is not a step's cost, as in decodekit's statistics
            self.tokens_computed += width
        self.forwards += 1


def _hf_kwargs(spec: MethodSpec, model: Any, draft: Any) -> dict[str, Any]:
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        eos = model.generation_config.eos_token_id
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    kwargs: dict[str, Any] = {"do_sample": False, "pad_token_id": pad}
    if spec.name == "hf-prompt-lookup":
        kwargs["prompt_lookup_num_tokens"] = spec.params.get("num_tokens", 10)
        kwargs["max_matching_ngram_size"] = spec.params.get("max_ngram", 2)
    elif spec.name == "hf-assisted":
        kwargs["assistant_model"] = draft
        kwargs["num_assistant_tokens"] = spec.params.get("num_assistant_tokens", 5)
    return kwargs


def run_hf(spec: MethodSpec, model: Any, ids: torch.Tensor, max_new_tokens: int, draft: Any = None) -> RunResult:
    """model.generate on one prompt (1, T), the target's forwards counted by a hook."""
    counter = ForwardCounter()
    handle = model.register_forward_pre_hook(counter, with_kwargs=True)
    try:
        kwargs = _hf_kwargs(spec, model, draft)
        began = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, **kwargs)
        sync(model.device)
        seconds = time.perf_counter() - began
    finally:
        handle.remove()
    return RunResult(new_tokens=out[0, ids.shape[1]:].tolist(), seconds=seconds,
                     forwards=counter.forwards, tokens_computed=counter.tokens_computed)


def run_decodekit(spec: MethodSpec, model: Any, ids: torch.Tensor, max_new_tokens: int, draft: Any = None) -> RunResult:
    """decodekit.generate on one prompt (1, T); forwards and tokens computed from its statistics."""
    from decodekit.api import generate

    extra = {"draft_model": draft} if draft is not None else {}
    began = time.perf_counter()
    out = generate(model, ids, spec.name, max_new_tokens=max_new_tokens, **extra, **spec.params)
    sync(model.device)
    seconds = time.perf_counter() - began
    return RunResult(new_tokens=out.sequences[0, ids.shape[1]:].tolist(), seconds=seconds,
                     forwards=out.stats.steps, tokens_computed=out.stats.tokens_computed)


def runner_for(spec: MethodSpec) -> Callable[..., RunResult]:
    return run_hf if spec.family == "hf" else run_decodekit


# -- running one batch ----------------------------------------------------------------------------


@attrs.define(kw_only=True, eq=False)
class Batch:
    """Prompts left-padded to one width, as model.generate takes a batch of a decoder-only model.

    input_ids (B, T): each row's prompt at the right, pad_id at its left; attention_mask (B, T): 1 on
    the prompt's tokens, 0 on the pads.
    """

    rows: tuple[tuple[int, ...], ...] = attrs.field(converter=lambda rows: tuple(tuple(r) for r in rows))
    pad_id: int
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def pad_left(rows: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> Batch:
    """Token-id rows -> a Batch: every row right-aligned, pads (and mask 0) at the left of shorter rows."""
    if not rows or any(len(r) == 0 for r in rows):
        raise InputError("a batch needs at least one row, and every row at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)  # (len,)
        mask[i, width - len(row):] = 1
    return Batch(rows=rows, pad_id=pad_id, input_ids=ids.to(device), attention_mask=mask.to(device))


@attrs.frozen(kw_only=True)
class BatchResult:
    """One method on one batch: each row's new tokens (up to and including its first eos, never the pad
    fill after it), the seconds of the whole call, and the target model's forward passes (None if not counted)."""

    new_tokens: tuple[tuple[int, ...], ...] = attrs.field(converter=lambda rows: tuple(tuple(r) for r in rows))
    seconds: float
    forwards: int | None


def eos_ids(model: Any) -> frozenset[int]:
    """The eos ids both model.generate and decodekit.generate stop at by default: the model's generation config's."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


def until_eos(tokens: Sequence[int], eos: frozenset[int]) -> list[int]:
    """A row's new tokens up to and including its first eos (what it generated; the pad fill after is cut)."""
    for i, token in enumerate(tokens):
        if token in eos:
            return list(tokens[:i + 1])
    return list(tokens)


def _row_tokens(sequences: torch.Tensor, width: int, model: Any) -> list[list[int]]:
    new = sequences[:, width:].tolist()  # (B, new)
    eos = eos_ids(model)
    return [until_eos(row, eos) for row in new]


def run_hf_batch(spec: MethodSpec, model: Any, batch: Batch, max_new_tokens: int, draft: Any = None) -> BatchResult:
    """model.generate on a left-padded batch (B, T) with its attention mask: HF's batched decoding."""
    counter = ForwardCounter()
    handle = model.register_forward_pre_hook(counter, with_kwargs=True)
    try:
        kwargs = {**_hf_kwargs(spec, model, draft), "pad_token_id": batch.pad_id}
        began = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(batch.input_ids, attention_mask=batch.attention_mask,
                                 max_new_tokens=max_new_tokens, **kwargs)  # (B, T + new)
        sync(model.device)
        seconds = time.perf_counter() - began
    finally:
        handle.remove()
    return BatchResult(new_tokens=_row_tokens(out, batch.input_ids.shape[1], model), seconds=seconds,
                       forwards=counter.forwards)


def run_decodekit_batch(spec: MethodSpec, model: Any, batch: Batch, max_new_tokens: int,
                        draft: Any = None) -> BatchResult:
    """decodekit.generate on a left-padded batch (B, T) with its attention mask, in one call."""
    from decodekit.api import generate

    extra = {"draft_model": draft} if draft is not None else {}
    began = time.perf_counter()
    out = generate(model, batch.input_ids, spec.name, attention_mask=batch.attention_mask, pad_token_id=batch.pad_id,
                   max_new_tokens=max_new_tokens, **extra, **spec.params)  # sequences (B, T + new)
    sync(model.device)
    seconds = time.perf_counter() - began
    return BatchResult(new_tokens=_row_tokens(out.sequences, batch.input_ids.shape[1], model), seconds=seconds,
                       forwards=out.stats.forward_passes)


def batch_runner_for(spec: MethodSpec) -> Callable[..., BatchResult]:
    return run_hf_batch if spec.family == "hf" else run_decodekit_batch
