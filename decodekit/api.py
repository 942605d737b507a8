"""generate(): the public entry point."""

from __future__ import annotations

import difflib
import inspect
import time
from typing import Any, Callable, Mapping

import attrs
import torch

from decodekit.core import loop
from decodekit.core import ranks as ranks_sync
from decodekit.core.backend import generation as hf_generation
from decodekit.core.backend import HFBackend
from decodekit.core.decoder import DecodeState
from decodekit.core.costmodel import PackedCost
from decodekit.core.kvcache import KVCacheManager, RowsCache
from decodekit.core.ranks import Ranks
from decodekit.core.registry import StrategyInfo
from decodekit.core.sampling import Sampler
from decodekit.core.types import GenerationOutput, GenerationStats
from decodekit.errors import InputError, StrategyParameterError
from decodekit.plugins.manager import get_registry


def list_strategies() -> list[str]:
    """Names of every registered strategy, plugins' included."""
    return get_registry().names()


def _check_input_ids(input_ids: Any, vocab: int) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor):
        raise InputError(f"input_ids must be a torch.LongTensor of shape (batch, length), got {type(input_ids).__name__}")
    if input_ids.is_meta:
        raise InputError(f"input_ids is on the meta device (shape {tuple(input_ids.shape)}, no values); "
                         f"pass a tensor holding the token ids")
    if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise InputError(f"input_ids must hold integer token ids (torch.long), got dtype {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must have shape (batch, length), got shape {tuple(input_ids.shape)}")
    if input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
        raise InputError(f"input_ids must hold at least one token in at least one row, got shape {tuple(input_ids.shape)}")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        raise InputError(f"input_ids must be token ids in [0, {vocab}), got values in [{low}, {high}]")
    return input_ids.long().cpu()


def _split_keywords(info: StrategyInfo, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(strategy parameters, generation settings): a keyword is the strategy's if its Params has it,
    a generation setting if GenerationConfig has it; anything else is refused with the closest name."""
    fields = [f.name for f in attrs.fields(info.cls.Params)]
    params, settings = {}, {}
    for key, value in kwargs.items():
        if key in fields:
            params[key] = value
        elif key in hf_generation.GENERATION_FIELDS:
            settings[key] = value
        else:
            lowered = {o.lower(): o for o in fields}
            match = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
            hint = f"; did you mean {lowered[match[0]]!r}?" if match else ""
            if not match:
                near = difflib.get_close_matches(key, sorted(hf_generation.GENERATION_FIELDS), n=1, cutoff=0.75)
                hint = f"; did you mean the generation setting {near[0]!r}?" if near else ""
            allowed = ", ".join(fields) if fields else "none"
            raise StrategyParameterError(f"unknown parameter {key!r} for {info.name!r}{hint} (parameters: {allowed}; "
                                         f"or any GenerationConfig attribute, such as max_new_tokens)")
    return params, settings


def _check_callbacks(on_step: Any, streamer: Any, batch: int) -> None:
    if on_step is not None and not callable(on_step):
        raise InputError(f"on_step must be a callable taking each step's committed tokens (a list of ints) or None, "
                         f"got {type(on_step).__name__} {on_step!r}")
    if streamer is not None:
        if not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
            raise InputError(f"streamer must have put() and end() (a transformers TextStreamer or "
                             f"TextIteratorStreamer), got {type(streamer).__name__}")
        if batch != 1:
            raise InputError(f"streamer= streams one sequence: input_ids must have batch size 1, got {batch}")


def prompt_rows(ids: torch.Tensor, attention_mask: Any) -> list[list[int]]:
    """Each row's prompt tokens: the row as given, less its left padding (attention_mask 0 at the left).

    A batch is padded as model.generate expects for a decoder-only model: on the left. Right padding,
    a hole inside a row, or a row with no token at all is refused with what was found.
    """
    if attention_mask is None:
        return ids.tolist()
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.is_meta \
            or tuple(attention_mask.shape) != tuple(ids.shape):
        raise InputError(f"attention_mask must be None or a tensor of input_ids' shape {tuple(ids.shape)} holding "
                         f"0 (padding) and 1 (token), got {type(attention_mask).__name__} "
                         f"{tuple(getattr(attention_mask, 'shape', ()))}")
    mask = attention_mask.cpu()
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError(f"attention_mask must hold only 0 (padding) and 1 (token), got values "
                         f"{sorted(set(mask.flatten().tolist()) - {0, 1})[:5]}")
    rows = []
    for b, (row, keep) in enumerate(zip(ids.tolist(), mask.long().tolist())):
        first = keep.index(1) if 1 in keep else None
        if first is None:
            raise InputError(f"attention_mask row {b} is all zeros: every row needs at least one token")
        if 0 in keep[first:]:
            raise InputError(f"attention_mask row {b} has padding after a token ({keep}): decodekit, like "
                             f"model.generate for decoder-only models, takes left padding; pad on the left "
                             f"(tokenizer.padding_side = 'left')")
        rows.append(row[first:])
    return rows


def _make_sampler(settings: hf_generation.GenerationSettings, info: StrategyInfo, generator: Any,
                  ranks: Ranks | None = None) -> Sampler | None:
    """The sampler of a do_sample call. On a model sharded over several ranks every rank must draw the same
    tokens: a generator seeded from the OS takes rank 0's seed; a given generator must hold the same state on
    every rank (seeded alike), which is checked."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if not settings.do_sample:
        return None
    if not info.capabilities.supports_sampling:
        raise InputError(f"strategy {info.name!r} does not support do_sample=True (it decodes greedily only)")
    if generator is None:  # no global RNG: a private generator, seeded from the OS (rank 0's seed on every rank)
        generator = torch.Generator()
        seed = generator.seed()
        if ranks is not None:
            generator.manual_seed(ranks.agree(seed))
    elif ranks is not None:
        ranks_sync.confirm_same(ranks, "generator=", ranks_sync.tensor_digest(generator.get_state()),
                                "seed the generator identically on every rank (torch.Generator().manual_seed(s) "
                                "with the same s), so that every rank samples the same tokens")
    return Sampler(config=settings.sampling, generator=generator)


def _draft_backend(info: StrategyInfo, draft_model: Any, backend: HFBackend) -> HFBackend | None:
    if not info.capabilities.needs_draft_model:
        if draft_model is not None:
            raise InputError(f"draft_model= was given but strategy {info.name!r} does not use a draft model")
        return None
    if draft_model is None:
        raise InputError(f"strategy {info.name!r} needs draft_model=, a smaller causal LM with the same vocabulary")
    draft = HFBackend.for_model(draft_model, role="draft_model")
    if draft.vocab_size != backend.vocab_size:
        raise InputError(f"draft_model's vocabulary ({draft.vocab_size} tokens) differs from the model's "
                         f"({backend.vocab_size}); speculative decoding needs the same tokenizer")
    return draft


def generate(
    model: Any,
    input_ids: torch.Tensor,
    strategy: str = "greedy",
    *,
    generation_config: Any = None,
    draft_model: Any = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[list[int]], None] | None = None,
    streamer: Any = None,
    tokenizer: Any = None,
    logits_processor: Any = None,
    stopping_criteria: Any = None,
    prefix_allowed_tokens_fn: Callable[[int, torch.Tensor], list[int]] | None = None,
    attention_mask: torch.Tensor | None = None,
    cost_model: Any = None,
    **kwargs: Any,
) -> GenerationOutput:
    """Decode `input_ids` with `strategy`; returns sequences (prompt + new, like model.generate) and stats.

    Keywords are the strategy's parameters (`W=15, N=5, G=15` for lookahead) or generation settings,
    the attributes of a transformers GenerationConfig (max_new_tokens, max_length, min_new_tokens,
    eos_token_id, pad_token_id, do_sample, temperature, top_k, top_p, repetition_penalty,
    no_repeat_ngram_size, bad_words_ids, suppress_tokens, begin_suppress_tokens, sequence_bias,
    stop_strings, ...). Generation settings are resolved exactly as model.generate resolves them:
    the call's keywords over `generation_config` over `model.generation_config` over HF's defaults
    (so max_new_tokens defaults to max_length 20 in all, eos to the generation config's, and
    eos_token_id=None means no eos). Every exact strategy stops where model.generate would stop.

    Logits processors (repetition penalty, ..., a user's `logits_processor` list) are applied to every
    token a strategy verifies, with that token's own prefix; `stopping_criteria` and `stop_strings`
    (with `tokenizer=`) are checked after every committed token, so a multi-token step is cut exactly
    where greedy decoding stops. A user's processors and criteria must be functions of (input_ids,
    scores) alone: decodekit calls them once per verified row, with a (1, L) input_ids.
    do_sample=True samples from `generator` (strategies whose capabilities include supports_sampling).
    on_step receives each step's committed tokens; `streamer` (a transformers TextStreamer or
    TextIteratorStreamer) gets the prompt, then each step's tokens as they are committed.
    cost_model: what a forward costs, for strategies that plan their steps (lookahead without W/N/G, the
    prompt-lookup plugin); default: measured for this model on this machine on first use
    (decodekit.core.costmodel), then cached on disk and refined as the decode runs.
    A batch may be left-padded, as model.generate takes it: pass its `attention_mask` (0 over the padding).
    Every row goes through one forward per step (rows that stop leave it); the sequences are laid out like
    model.generate's: each row as given, its new tokens, then the pad id where a row stopped early.
    Row b of a batch samples from its own stream, seeded from `generator`.
    Every argument is checked before any forward pass.
    """
    registry = get_registry()
    info = registry.get(strategy)
    params, settings_kwargs = _split_keywords(info, kwargs)
    strategy_params = registry.make_params(strategy, params)
    backend = HFBackend.for_model(model)
    ids = _check_input_ids(input_ids, backend.vocab_size)
    prompts = prompt_rows(ids, attention_mask)
    _check_callbacks(on_step, streamer, int(ids.shape[0]))
    settings = hf_generation.resolve(model, ids, backend.vocab_size, generation_config, settings_kwargs,
                                     logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                                     tokenizer=tokenizer, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn)
    if cost_model is not None and not callable(getattr(cost_model, "seconds", None)):
        raise InputError(f"cost_model must have seconds(tokens, cached) (a decodekit.core.costmodel.CostModel), "
                         f"got {type(cost_model).__name__}")
    return _decode_rows(backend, ids, prompts, info, strategy_params, settings, draft_model=draft_model,
                        generator=generator, on_step=on_step, streamer=streamer, device=input_ids.device,
                        cost_model=cost_model)


def _row_samplers(sampler: Sampler | None, rows: int) -> list[Sampler | None]:
    """One sampling stream per row: the call's generator for one row; for a batch, a generator per row
    seeded from it (row b's draws do not depend on how many tokens the other rows drew)."""
    if sampler is None or rows == 1:
        return [sampler] * rows
    seeds = torch.randint(0, 2**62, (rows,), generator=sampler.generator).tolist()  # (B,)
    return [attrs.evolve(sampler, generator=torch.Generator().manual_seed(seed)) for seed in seeds]


def _decode_rows(backend: HFBackend, ids: torch.Tensor, prompts: list[list[int]], info: StrategyInfo,
                 strategy_params: Any, settings: hf_generation.GenerationSettings, *, draft_model: Any,
                 generator: Any, on_step: Callable[[list[int]], None] | None, streamer: Any, device: torch.device,
                 cost_model: Any = None) -> GenerationOutput:
    """Decode every row of `ids` (B, L) (its prompt `prompts[b]`, left padding removed) with resolved settings.

    Checks what is left before the first forward. Strategies of the propose/verify contract decode every row
    together, one forward per step; a strategy that runs its own `step` decodes the rows one after another.
    """
    longest = max(len(p) for p in prompts)
    backend.check_length(longest + settings.max_new_tokens,
                         f"prompt length {longest} + max_new_tokens {settings.max_new_tokens}")
    samplers = _row_samplers(_make_sampler(settings, info, generator, backend.ranks), len(prompts))
    draft = _draft_backend(info, draft_model, backend)
    cost = PackedCost(target=backend.model, model=cost_model)

    def state_for(b: int, kv: Any, stop: bool = True, max_new_tokens: int = settings.max_new_tokens) -> DecodeState:
        return DecodeState(backend=backend, kv=kv, tokens=list(prompts[b]), prompt_length=len(prompts[b]),
                           max_new_tokens=max_new_tokens, eos_ids=settings.eos_ids, sampler=samplers[b], draft=draft,
                           processors=settings.processors, processing_device=device,
                           stop_checks=settings.stop_checks if stop else (), cost=cost)

    callback = on_step
    if streamer is not None:
        streamer.put(ids.cpu())  # the prompt first, as model.generate does (TextStreamer's skip_prompt drops it)

        def callback(tokens: list[int]) -> None:
            streamer.put(torch.tensor(tokens, dtype=torch.long))  # (k,): one step's committed tokens
            if on_step is not None:
                on_step(tokens)

    began = time.perf_counter()
    try:
        with torch.inference_mode():
            if info.cls.batched():
                rows = RowsCache(backend, lengths=[0] * len(prompts))
                states = [state_for(b, rows.row(b)) for b in range(len(prompts))]
                stats, forwards = loop.run([info.cls(strategy_params) for _ in prompts], states, rows, callback, cost,
                                           pad_finished=settings.pads_finished)
            else:
                states, stats = _decode_one_by_one(state_for, backend, info, strategy_params, settings, len(prompts),
                                                   callback)
                forwards = sum(st.steps for st in stats)
    finally:
        if streamer is not None:
            streamer.end()
    seconds = time.perf_counter() - began
    new = [s.tokens[s.prompt_length:] for s in states]
    width = max(len(n) for n in new)
    pad = settings.pad_id if settings.pad_id is not None else 0
    sequences = torch.tensor([row + n + [pad] * (width - len(n)) for row, n in zip(ids.tolist(), new)],
                             dtype=torch.long)  # (B, L + new): each prompt as given, its new tokens, the pad fill
    return GenerationOutput(sequences=sequences.to(device),
                            stats=stats[0] if len(stats) == 1 else GenerationStats.merge(stats, seconds=seconds,
                                                                                         forwards=forwards))


def _decode_one_by_one(state_for: Callable[..., DecodeState], backend: HFBackend, info: StrategyInfo,
                       strategy_params: Any,
                       settings: hf_generation.GenerationSettings, count: int,
                       callback: Callable[[list[int]], None] | None) -> tuple[list[DecodeState], list[GenerationStats]]:
    """Rows one after another, each with its own cache (a strategy that runs its own forward in `step`)."""
    def decode(b: int, stop: bool, max_new_tokens: int) -> tuple[DecodeState, GenerationStats]:
        state = state_for(b, KVCacheManager(backend), stop, max_new_tokens)
        return state, loop.run_one(info.cls(strategy_params), state, callback)

    done = [decode(b, True, settings.max_new_tokens) for b in range(count)]
    width = max(len(s.tokens) - s.prompt_length for s, _ in done)
    if not settings.pads_finished and count > 1:
        # without an eos criterion model.generate pads nothing: a row stopped early (a stop string)
        # goes on decoding until every row has stopped
        done = [(s, st) if len(s.tokens) - s.prompt_length == width else decode(b, False, width)
                for b, (s, st) in enumerate(done)]
    return [s for s, _ in done], [st for _, st in done]


# model kwargs model.generate hands a custom_generate callable besides the inputs; all but these are refused
_HF_MODEL_KWARGS = frozenset({"attention_mask", "position_ids", "cache", "past_key_values", "use_cache",
                              "logits_to_keep"})


class HFGenerate:
    """decodekit's strategies inside HF's own generate: `model.generate(..., custom_generate=decodekit.hf_generate)`.

        model.generate(input_ids, custom_generate=decodekit.hf_generate, strategy="lookahead", W=3,
                       max_new_tokens=64, repetition_penalty=1.2)

    model.generate prepares everything as usual (the generation config with eos, pad and lengths,
    the logits processors, the stopping criteria) and calls this with them (transformers >= 4.56);
    decodekit decodes with `strategy` and returns what model.generate returns: the sequences, or a
    GenerateDecoderOnlyOutput holding them with return_dict_in_generate=True. Strategy parameters,
    `strategy`, `draft_model`, `generator` and `on_step` are keywords of model.generate. (HF reads a
    custom_generate callable's own keywords from its signature, so the signature lists every
    registered strategy's parameters.) transformers 5.x does not hand such a callable `streamer=`
    or `tokenizer=`: pass stop strings as stopping_criteria=[StopStringCriteria(tokenizer, [...])].
    """

    _FIXED = ("model", "input_ids", "logits_processor", "stopping_criteria", "generation_config")

    @property
    def __signature__(self) -> inspect.Signature:
        P = inspect.Parameter
        params = [P(name, P.POSITIONAL_OR_KEYWORD) for name in self._FIXED]
        params += [P("strategy", P.KEYWORD_ONLY, default="greedy"), P("draft_model", P.KEYWORD_ONLY, default=None),
                   P("generator", P.KEYWORD_ONLY, default=None), P("on_step", P.KEYWORD_ONLY, default=None)]
        taken = {p.name for p in params}
        registry = get_registry()
        for name in registry.names():
            for field in attrs.fields(registry.get(name).cls.Params):
                if field.name not in taken:
                    taken.add(field.name)
                    params.append(P(field.name, P.KEYWORD_ONLY, default=None))
        return inspect.Signature(params + [P("model_kwargs", P.VAR_KEYWORD)])

    def __call__(self, model: Any, input_ids: torch.Tensor, logits_processor: Any = None, stopping_criteria: Any = None,
                 generation_config: Any = None, *, strategy: str = "greedy", draft_model: Any = None,
                 generator: torch.Generator | None = None, on_step: Callable[[list[int]], None] | None = None,
                 **kwargs: Any) -> Any:
        registry = get_registry()
        info = registry.get(strategy)
        fields = {f.name for f in attrs.fields(info.cls.Params)}
        params = {k: v for k, v in kwargs.items() if k in fields}
        rest = {k: v for k, v in kwargs.items() if k not in fields}
        every_param = set(self.__signature__.parameters)
        stray = sorted(k for k, v in rest.items() if k in every_param and v is not None)
        if stray:  # another strategy's parameter
            registry.make_params(strategy, {k: rest[k] for k in stray})
        unknown = sorted(k for k in rest if k not in every_param and k not in _HF_MODEL_KWARGS)
        if unknown:
            raise InputError(f"decodekit.hf_generate cannot use model.generate's {', '.join(map(repr, unknown))}")
        strategy_params = registry.make_params(strategy, params)
        backend = HFBackend.for_model(model)
        ids = _check_input_ids(input_ids, backend.vocab_size)
        prompts = prompt_rows(ids, rest.get("attention_mask"))
        for name in ("cache", "past_key_values"):
            cache = rest.get(name)
            if cache is not None and HFBackend.cache_length(cache) > 0:
                raise InputError(f"{name}= holds {HFBackend.cache_length(cache)} positions; decodekit.hf_generate "
                                 f"starts from an empty cache")
        _check_callbacks(on_step, None, int(ids.shape[0]))
        if generation_config is None:
            raise InputError("decodekit.hf_generate is called by model.generate(custom_generate=...), which passes "
                             "generation_config; to call decodekit directly use decodekit.generate")
        settings = hf_generation.from_prepared(model, ids, backend.vocab_size, generation_config, logits_processor,
                                               stopping_criteria)
        out = _decode_rows(backend, ids, prompts, info, strategy_params, settings, draft_model=draft_model,
                           generator=generator, on_step=on_step, streamer=None, device=input_ids.device)
        if settings.return_dict_in_generate:
            return hf_generation.decoder_only_output(out.sequences)
        return out.sequences


hf_generate = HFGenerate()
