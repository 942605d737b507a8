"""Methods to benchmark, parsed from strings, and how each one runs a prompt.

A method spec is `NAME` or `NAME:KEY=VALUE,KEY=VALUE`:
- a decodekit strategy from the registry (`greedy`, `lookahead:W=7,N=4,G=7`, a plugin's strategy);
  its parameters are validated by the registry, so a typo fails before any model is loaded.
  A strategy that needs a draft model takes `draft=default|PATH` (`speculative:gamma=4,draft=PATH`).
- a HuggingFace peer: `hf-greedy` (model.generate(do_sample=False)), `hf-prompt-lookup`
  (prompt_lookup_num_tokens; `hf-prompt-lookup:num_tokens=10,max_ngram=2`) and `hf-assisted`
  (assisted generation with a draft model: `hf-assisted:draft=PATH`).
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import attrs
import torch

from decodekit.bench.memory import sync
from decodekit.core.params import ParamInfo, describe, param, parse_value
from decodekit.errors import StrategyParameterError, UnknownStrategyError
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


def default_method_texts() -> list[str]:
    """hf-greedy, greedy, hf-prompt-lookup, then every registered exact strategy that needs no draft model."""
    registry = get_registry()
    texts = [REFERENCE, "greedy", "hf-prompt-lookup"]
    for name in registry.names():
        caps = registry.get(name).capabilities
        if caps.exact and not caps.needs_draft_model and name not in texts:
            texts.append(name)
    return texts


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
