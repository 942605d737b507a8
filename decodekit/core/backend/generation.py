"""The HuggingFace generation adapter: a `model.generate`-style call resolved into decodekit's settings.

It is part of the backend package (decodekit.core.backend), the only code that imports transformers
(tests/unit/test_layout.py holds the package to that). It turns HF's generation arguments into plain data the one decode loop uses:

- the generation config, resolved exactly as `model.generate` resolves it (the call's keywords over
  `generation_config=` over `model.generation_config` over HF's global defaults; eos, pad,
  `max_new_tokens` / `max_length`, `min_new_tokens`), by the model's own GenerationMixin helpers
  (`_prepare_generation_config`, `_prepare_special_tokens`, `_prepare_generated_length`,
  `_get_logits_processor`, `_get_stopping_criteria`): private methods, called rather than copied so
  that every rule is HF's own; a transformers release that renames them is adapted here;
- the logits processors HF would apply, kept as HF objects: each is a function of (prefix, scores),
  so the loop applies them to every verified row with that row's own prefix (DecodeState.scores);
  the sampling warpers temperature / top-k / top-p become decodekit's SamplingConfig (same math);
- the stopping criteria: max length and eos become numbers the loop checks natively, every other
  criterion (stop strings, max_time, a user's own) is checked after every committed token.

Settings decodekit cannot honour exactly (beam search, contrastive search, classifier-free
guidance, watermarking, other sampling warpers, score outputs, ...) are refused, naming them.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Mapping

import attrs
import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.generation import (
    EosTokenCriteria,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitNormalization,
    MaxLengthCriteria,
    MinPLogitsWarper,
    SynthIDTextWatermarkLogitsProcessor,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
    UnbatchedClassifierFreeGuidanceLogitsProcessor,
    WatermarkLogitsProcessor,
)

from decodekit.core.sampling import SamplingConfig
from decodekit.errors import InputError, ModelNotSupportedError

# Every attribute a GenerationConfig has: a keyword of generate() with one of these names is a generation
# setting, any other keyword a strategy parameter.
GENERATION_FIELDS: frozenset[str] = frozenset(k for k in vars(GenerationConfig()) if not k.startswith("_"))

# HF's sampling warpers decodekit's SamplingConfig applies itself (same order: temperature, top-k, top-p)
_OWN_WARPERS = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
# warpers with no counterpart in decodekit's sampler: refused under sampling
_OTHER_WARPERS = {MinPLogitsWarper: "min_p", TypicalLogitsWarper: "typical_p", EpsilonLogitsWarper: "epsilon_cutoff",
                  EtaLogitsWarper: "eta_cutoff", TopHLogitsWarper: "top_h"}
# processors that are not a function of (prefix, scores): a model of their own, or hidden state
_NOT_PER_ROW = {UnbatchedClassifierFreeGuidanceLogitsProcessor: "guidance_scale",
                WatermarkLogitsProcessor: "watermarking_config",
                SynthIDTextWatermarkLogitsProcessor: "watermarking_config"}

_SAMPLING_ONLY = ("temperature", "top_k", "top_p")  # validated even without do_sample; warned about when unused
_HF_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}  # the values model.generate does not warn about
# the GenerationMixin methods whose rules decodekit follows (see the module docstring)
_GENERATE_HELPERS = ("_prepare_generation_config", "_prepare_special_tokens", "_prepare_generated_length",
                     "_get_logits_processor", "_get_stopping_criteria")
_OUTPUT_FLAGS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")


@attrs.frozen(kw_only=True)
class GenerationSettings:
    """What one generate() call decodes with, after HF's resolution.

    eos_ids: the ids that end a row (empty: none). pads_finished: whether HF pads rows that have
    stopped (it does when an eos criterion exists); pad_id: what it pads with (None: no pad id).
    processors: HF logits processors, each (input_ids (1, L), scores (1, V)) -> (1, V), in HF's order.
    stop_checks: criteria checked after every committed token, each prefix -> bool.
    """

    max_new_tokens: int
    eos_ids: frozenset[int]
    pads_finished: bool
    pad_id: int | None
    do_sample: bool
    sampling: SamplingConfig
    processors: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...]
    stop_checks: tuple[Callable[[list[int]], bool], ...]
    return_dict_in_generate: bool = False


# -- checks of the call's own values, with errors that name the parameter -------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def token_ids(name: str, value: Any, vocab: int, *, allow_none: bool = True) -> list[int] | None:
    """An id, a list of ids, or a 0-d / 1-d integer tensor of them (as HF accepts) -> list of ids in [0, vocab)."""
    if value is None and allow_none:
        return None
    if isinstance(value, torch.Tensor):
        if value.is_meta or value.dim() > 1 or value.dtype.is_floating_point or value.dtype.is_complex \
                or value.dtype == torch.bool:
            raise InputError(f"{name} must be a token id, a list of them or a 0-d / 1-d integer tensor, got a "
                             f"{'meta ' if value.is_meta else ''}tensor of dtype {value.dtype} and shape "
                             f"{tuple(value.shape)}")
        value = value.tolist()
    ids = [value] if _is_int(value) else list(value) if isinstance(value, (list, tuple)) else None
    if ids is None or not all(_is_int(t) and 0 <= t < vocab for t in ids):
        raise InputError(f"{name} must be a token id in [0, {vocab}) or a list of them, got {value!r}")
    return ids


def _check_call_values(kwargs: Mapping[str, Any], vocab: int) -> None:
    """The values model.generate would accept silently or fail on deep inside: checked up front."""
    def need(cond: bool, name: str, allowed: str) -> None:
        if not cond:
            raise InputError(f"{name} must be {allowed}, got {kwargs[name]!r}")

    if kwargs.get("max_new_tokens") is not None:  # None: max_length decides, as in model.generate
        need(_is_int(kwargs["max_new_tokens"]) and kwargs["max_new_tokens"] >= 1, "max_new_tokens", "an integer >= 1")
    for name in ("max_length", "min_length", "min_new_tokens", "no_repeat_ngram_size", "top_k"):
        if name in kwargs and kwargs[name] is not None:
            need(_is_int(kwargs[name]) and kwargs[name] >= (1 if name == "max_length" else 0), name,
                 "an integer >= 1" if name == "max_length" else
                 "an integer >= 0 (0 disables it)" if name in ("top_k", "no_repeat_ngram_size") else "an integer >= 0")
    if kwargs.get("temperature") is not None:
        t = kwargs["temperature"]
        need(_is_number(t) and t > 0, "temperature", "a number > 0")
        need(math.isfinite(t), "temperature", "a finite number > 0")
    if kwargs.get("top_p") is not None:
        need(_is_number(kwargs["top_p"]) and 0 < kwargs["top_p"] <= 1, "top_p", "a number in (0, 1]")
    if kwargs.get("repetition_penalty") is not None:
        p = kwargs["repetition_penalty"]
        need(_is_number(p) and p > 0 and math.isfinite(p), "repetition_penalty", "a finite number > 0")
    if "do_sample" in kwargs:
        need(isinstance(kwargs["do_sample"], bool), "do_sample", "True or False")
    for name in ("eos_token_id", "pad_token_id"):
        if name in kwargs:
            ids = token_ids(name, kwargs[name], vocab)
            if name == "pad_token_id" and ids is not None and len(ids) != 1:
                raise InputError(f"pad_token_id must be one token id in [0, {vocab}), got {kwargs[name]!r}")
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        if kwargs.get(name) is not None:
            value = kwargs[name]
            if not isinstance(value, (list, tuple)):
                raise InputError(f"{name} must be a list of token ids in [0, {vocab}), got {value!r}")
            token_ids(name, list(value), vocab)
    if kwargs.get("bad_words_ids") is not None:
        value = kwargs["bad_words_ids"]
        ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(
            isinstance(w, (list, tuple)) and len(w) > 0 and all(_is_int(t) and 0 <= t < vocab for t in w) for w in value)
        if not ok:
            raise InputError(f"bad_words_ids must be a non-empty list of non-empty lists of token ids in [0, {vocab}), "
                             f"got {value!r}")
    if kwargs.get("sequence_bias") is not None:
        value = kwargs["sequence_bias"]
        ok = isinstance(value, dict) and all(
            isinstance(k, tuple) and len(k) > 0 and all(_is_int(t) and 0 <= t < vocab for t in k) and _is_number(v)
            for k, v in value.items())
        if not ok:
            raise InputError(f"sequence_bias must be a dict from tuples of token ids in [0, {vocab}) to numbers, "
                             f"got {value!r}")


def _warn_unused_sampling(kwargs: Mapping[str, Any], do_sample: bool) -> None:
    """Valid sampling values the call will not use: warned about, as model.generate does (once per call site)."""
    if do_sample:
        return
    unused = [f"{k}={kwargs[k]!r}" for k in _SAMPLING_ONLY
              if kwargs.get(k) is not None and kwargs[k] != _HF_SAMPLING_DEFAULTS[k]]
    if unused:
        warnings.warn(f"{', '.join(unused)} only apply when sampling; do_sample is not True, so "
                      f"{'they are' if len(unused) > 1 else 'it is'} ignored (set do_sample=True or leave "
                      f"{'them' if len(unused) > 1 else 'it'} unset)", UserWarning, stacklevel=4)


def _refuse_unsupported(config: GenerationConfig, *, allow_return_dict: bool) -> None:
    """Settings whose output decodekit cannot reproduce exactly: an error naming them."""
    mode = str(getattr(config.get_generation_mode(), "value", config.get_generation_mode()))
    if mode not in ("greedy_search", "sample"):
        raise InputError(f"generation mode {mode!r} (from num_beams={config.num_beams}, penalty_alpha="
                         f"{getattr(config, 'penalty_alpha', None)}, prompt_lookup_num_tokens="
                         f"{config.prompt_lookup_num_tokens}, ...) is not supported: decodekit decodes exactly "
                         f"what greedy search or sampling (num_beams=1) does")
    if config.num_return_sequences not in (None, 1):
        raise InputError(f"num_return_sequences must be 1 with decodekit, got {config.num_return_sequences}; "
                         f"repeat the prompt in the batch instead")
    if config.guidance_scale not in (None, 1, 1.0):
        raise InputError(f"guidance_scale={config.guidance_scale} is not supported: classifier-free guidance runs "
                         f"a second model pass per token that decodekit's steps do not make")
    if config.watermarking_config is not None:
        raise InputError("watermarking_config is not supported by decodekit")
    if config.token_healing:
        raise InputError("token_healing=True is not supported by decodekit")
    for flag in _OUTPUT_FLAGS:
        if getattr(config, flag, None):
            raise InputError(f"{flag}=True is not supported: decodekit returns sequences and its own statistics")
    if config.return_dict_in_generate and not allow_return_dict:
        raise InputError("return_dict_in_generate=True is not supported by decodekit.generate (it returns a "
                         "GenerationOutput); use it through model.generate(custom_generate=decodekit.hf_generate)")
    if config.do_sample:
        for name in ("min_p", "top_h"):
            if getattr(config, name, None) is not None:
                raise InputError(f"{name}={getattr(config, name)} is not supported with do_sample=True; decodekit "
                                 f"samples with temperature, top_k and top_p")
        for name, off in (("typical_p", 1.0), ("epsilon_cutoff", 0.0), ("eta_cutoff", 0.0)):
            if getattr(config, name, None) not in (None, off):
                raise InputError(f"{name}={getattr(config, name)} is not supported with do_sample=True; decodekit "
                                 f"samples with temperature, top_k and top_p")


# -- from HF objects to decodekit's settings --------------------------------------------------------------


def _split_processors(processors: Iterable[Any]) -> tuple[Any, ...]:
    """HF's processor list without the warpers decodekit's sampler applies itself; refusals for the rest."""
    kept = []
    for proc in processors:
        if isinstance(proc, _OWN_WARPERS) or isinstance(proc, LogitNormalization):
            continue  # LogitNormalization (log-softmax, last) changes neither the argmax nor the softmax
        for cls, name in {**_OTHER_WARPERS, **_NOT_PER_ROW}.items():
            if isinstance(proc, cls):
                raise InputError(f"{type(proc).__name__} (from {name}) is not supported by decodekit")
        kept.append(proc)
    return tuple(kept)


def _criterion_check(criterion: Any, device: torch.device) -> Callable[[list[int]], bool]:
    def check(prefix: list[int]) -> bool:
        ids = torch.tensor([prefix], dtype=torch.long, device=device)  # (1, L)
        return bool(criterion(ids, None).reshape(-1)[0])

    return check


def _split_criteria(criteria: Iterable[Any], prompt_length: int, max_new_tokens: int, eos: list[int] | None,
                    vocab: int, device: torch.device) -> tuple[int, list[int] | None, bool, tuple]:
    """(max_new_tokens, eos ids, whether an eos criterion exists, per-token checks) from HF's criteria."""
    checks = []
    has_eos = False
    for criterion in criteria:
        if isinstance(criterion, MaxLengthCriteria):
            max_new_tokens = min(max_new_tokens, int(criterion.max_length) - prompt_length)
        elif isinstance(criterion, EosTokenCriteria):
            has_eos = True
            ids = token_ids("eos_token_id", criterion.eos_token_id.reshape(-1).cpu(), vocab)
            eos = sorted(set(eos or []) | set(ids))
        else:
            checks.append(_criterion_check(criterion, device))
    return max_new_tokens, eos, has_eos, tuple(checks)


def _sampling_config(config: GenerationConfig) -> SamplingConfig:
    if not config.do_sample:
        return SamplingConfig()
    return SamplingConfig(temperature=1.0 if config.temperature is None else config.temperature,
                          top_k=config.top_k or 0, top_p=1.0 if config.top_p is None else config.top_p)


def _settings(model: Any, input_ids: torch.Tensor, config: GenerationConfig, processors: Iterable[Any],
              criteria: Iterable[Any], vocab: int, *, allow_return_dict: bool) -> GenerationSettings:
    _refuse_unsupported(config, allow_return_dict=allow_return_dict)
    prompt_length = int(input_ids.shape[1])
    eos_tensor = config._eos_token_tensor
    eos = None if eos_tensor is None else token_ids("eos_token_id", eos_tensor.reshape(-1).cpu(), vocab)
    max_new, eos, has_eos, checks = _split_criteria(criteria, prompt_length, config.max_length - prompt_length,
                                                    eos, vocab, input_ids.device)
    if max_new < 1:
        raise InputError(f"max_length ({config.max_length}) must exceed the prompt length ({prompt_length}); "
                         f"set max_new_tokens instead")
    pad = config._pad_token_tensor
    try:
        sampling = _sampling_config(config)
    except InputError as exc:
        raise InputError(f"generation config: {exc}") from None
    return GenerationSettings(
        max_new_tokens=max_new, eos_ids=frozenset(eos or ()), pads_finished=has_eos,
        pad_id=None if pad is None else int(pad.reshape(-1)[0]), do_sample=bool(config.do_sample), sampling=sampling,
        processors=_split_processors(processors), stop_checks=checks,
        return_dict_in_generate=bool(config.return_dict_in_generate))


def resolve(model: Any, input_ids: torch.Tensor, vocab: int, generation_config: Any, kwargs: Mapping[str, Any], *,
            logits_processor: Any = None, stopping_criteria: Any = None, tokenizer: Any = None,
            prefix_allowed_tokens_fn: Any = None) -> GenerationSettings:
    """decodekit.generate's HF arguments -> settings, by model.generate's own resolution; raises before any forward.

    kwargs: the call's GenerationConfig keywords (max_new_tokens, eos_token_id, do_sample, stop_strings, ...).
    """
    missing = [m for m in _GENERATE_HELPERS if not callable(getattr(model, m, None))]
    if missing:
        raise ModelNotSupportedError(f"model ({type(model).__name__}) lacks model.generate's helpers {missing}: "
                                     f"decodekit needs a causal LM with a generation head (a GenerationMixin)")
    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise InputError(f"generation_config must be a transformers GenerationConfig, got "
                         f"{type(generation_config).__name__}")
    _check_call_values(kwargs, vocab)
    kwargs = dict(kwargs)
    for name in ("eos_token_id", "pad_token_id"):
        if isinstance(kwargs.get(name), torch.Tensor):  # HF's GenerationConfig keeps ints; tensors are converted here
            ids = kwargs[name].tolist()
            kwargs[name] = ids
    if kwargs.get("stop_strings") is not None and tokenizer is None:
        raise InputError(f"stop_strings={kwargs['stop_strings']!r} needs tokenizer= (the model's tokenizer), "
                         f"to find where each stop string ends in the tokens")
    for name, value, kind in (("logits_processor", logits_processor, LogitsProcessorList),
                              ("stopping_criteria", stopping_criteria, StoppingCriteriaList)):
        if value is not None and not isinstance(value, (kind, list)):
            raise InputError(f"{name} must be a {kind.__name__} (or a list), got {type(value).__name__}")
    if prefix_allowed_tokens_fn is not None and not callable(prefix_allowed_tokens_fn):
        raise InputError(f"prefix_allowed_tokens_fn must be callable, got {type(prefix_allowed_tokens_fn).__name__}")

    has_default_max_length = (kwargs.get("max_length") is None
                              and (generation_config is None or generation_config.max_length is None)
                              and model.generation_config.max_length is None)
    has_default_min_length = (kwargs.get("min_length") is None
                              and (generation_config is None or generation_config.min_length is None)
                              and model.generation_config.min_length is None)
    prompt_length = int(input_ids.shape[1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # HF's own length warnings; decodekit warns about what matters below
            config, unused = model._prepare_generation_config(generation_config, **kwargs)
            if unused:
                raise InputError(f"not generation settings: {sorted(unused)}")
            model._prepare_special_tokens(config, True, device=input_ids.device, batch_size=int(input_ids.shape[0]))
            config = model._prepare_generated_length(
                generation_config=config, has_default_max_length=has_default_max_length,
                has_default_min_length=has_default_min_length, model_input_name="input_ids",
                input_ids_length=prompt_length, inputs_tensor=input_ids)
            if prompt_length >= config.max_length:
                raise InputError(f"max_length ({config.max_length}) must exceed the prompt length ({prompt_length}); "
                                 f"set max_new_tokens instead")
            _refuse_unsupported(config, allow_return_dict=False)
            processors = model._get_logits_processor(
                generation_config=config, input_ids_seq_length=prompt_length, encoder_input_ids=input_ids,
                prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                logits_processor=LogitsProcessorList(logits_processor or []), device=input_ids.device,
                model_kwargs={"attention_mask": None})
            criteria = model._get_stopping_criteria(generation_config=config,
                                                    stopping_criteria=StoppingCriteriaList(stopping_criteria or []),
                                                    tokenizer=tokenizer)
    except InputError:
        raise
    except (ValueError, TypeError) as exc:  # HF's own validation of a setting decodekit does not check itself
        raise InputError(f"generation settings: {exc}") from None
    _warn_unused_sampling(kwargs, bool(config.do_sample))
    if has_default_max_length and config.max_new_tokens is None:
        warnings.warn(f"neither max_new_tokens nor max_length is set: model.generate's default max_length applies "
                      f"({config.max_length}, {config.max_length - prompt_length} new tokens); set max_new_tokens",
                      UserWarning, stacklevel=3)
    return _settings(model, input_ids, config, processors, criteria, vocab, allow_return_dict=False)


def from_prepared(model: Any, input_ids: torch.Tensor, vocab: int, generation_config: GenerationConfig,
                  logits_processor: Any, stopping_criteria: Any) -> GenerationSettings:
    """What model.generate hands a custom_generate callable (config, processors, criteria all prepared) -> settings."""
    return _settings(model, input_ids, generation_config, logits_processor or [], stopping_criteria or [], vocab,
                     allow_return_dict=True)


def decoder_only_output(sequences: torch.Tensor) -> Any:
    """model.generate's return_dict_in_generate=True result, holding the sequences only."""
    from transformers.generation import GenerateDecoderOnlyOutput

    return GenerateDecoderOnlyOutput(sequences=sequences)
