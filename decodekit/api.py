"""generate(): the public entry point."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from decodekit.core import loop
from decodekit.core.backend import HFBackend
from decodekit.core.decoder import DecodeState
from decodekit.core.kvcache import KVCacheManager
from decodekit.core.sampling import Sampler, SamplingConfig
from decodekit.core.types import GenerationOutput, GenerationStats
from decodekit.errors import InputError
from decodekit.plugins.manager import get_registry


def list_strategies() -> list[str]:
    """Names of every registered strategy, plugins' included."""
    return get_registry().names()


def _eos_ids(model: Any, eos_token_id: int | Iterable[int] | None, vocab: int) -> frozenset[int]:
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = getattr(model.config, "eos_token_id", None)
        if eos_token_id is None:
            return frozenset()
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab:
            raise InputError(f"eos_token_id must be a token id in [0, {vocab}) or a list of them, got {eos_token_id!r}")
    return frozenset(ids)


def _check_input_ids(input_ids: Any, vocab: int) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor):
        raise InputError(f"input_ids must be a torch.LongTensor of shape (batch, length), got {type(input_ids).__name__}")
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


def _pad_id(model: Any, eos: frozenset[int]) -> int:
    pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if isinstance(pad, int):
        return pad
    return min(eos) if eos else 0


def generate(
    model: Any,
    input_ids: torch.Tensor,
    strategy: str = "greedy",
    *,
    max_new_tokens: int = 128,
    eos_token_id: int | Iterable[int] | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    draft_model: Any = None,
    on_step: Callable[[list[int]], None] | None = None,
    cost_model: Any = None,
    **params: Any,
) -> GenerationOutput:
    """Decode `input_ids` with `strategy`; returns sequences (prompt + new, like model.generate) and stats.

    Strategy parameters are keywords (`W=15, N=5, G=15` for lookahead), validated before any work.
    eos_token_id defaults to the model's generation config (every id listed there stops).
    do_sample=True samples with temperature / top_k / top_p from `generator` (strategies whose
    capabilities include supports_sampling). on_step receives each step's committed tokens.
    cost_model: what a forward costs, for strategies that plan their steps (lookahead without W/N/G);
    default: measured for this model on this machine on first use (decodekit.core.costmodel).
    Rows of a batch are decoded one after another and padded, like model.generate, with the pad id.
    """
    registry = get_registry()
    info = registry.get(strategy)
    strategy_params = registry.make_params(strategy, params)
    backend = HFBackend.for_model(model)
    ids = _check_input_ids(input_ids, backend.vocab_size)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    backend.check_length(ids.shape[1] + max_new_tokens, f"prompt length {ids.shape[1]} + max_new_tokens {max_new_tokens}")
    eos = _eos_ids(model, eos_token_id, backend.vocab_size)
    if not isinstance(do_sample, bool):
        raise InputError(f"do_sample must be True or False, got {do_sample!r}")
    sampler = None
    if do_sample:
        if not info.capabilities.supports_sampling:
            raise InputError(f"strategy {strategy!r} does not support do_sample=True (it decodes greedily only)")
        if generator is None:  # no global RNG: a private generator, seeded from the OS
            generator = torch.Generator()
            generator.seed()
        elif not isinstance(generator, torch.Generator):
            raise InputError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        sampler = Sampler(config=SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p),
                          generator=generator)
    draft = None
    if info.capabilities.needs_draft_model:
        if draft_model is None:
            raise InputError(f"strategy {strategy!r} needs draft_model=, a smaller causal LM with the same vocabulary")
        draft = HFBackend.for_model(draft_model, role="draft_model")
        if draft.vocab_size != backend.vocab_size:
            raise InputError(f"draft_model's vocabulary ({draft.vocab_size} tokens) differs from the model's "
                             f"({backend.vocab_size}); speculative decoding needs the same tokenizer")
    elif draft_model is not None:
        raise InputError(f"draft_model= was given but strategy {strategy!r} does not use a draft model")
    if cost_model is not None and not callable(getattr(cost_model, "seconds", None)):
        raise InputError(f"cost_model must have seconds(tokens, cached) (a decodekit.core.costmodel.CostModel), "
                         f"got {type(cost_model).__name__}")

    rows: list[list[int]] = []
    stats: list[GenerationStats] = []
    with torch.inference_mode():
        for row in ids:
            decoder = info.cls(strategy_params)
            state = DecodeState(backend=backend, kv=KVCacheManager(backend), tokens=row.tolist(),
                                prompt_length=int(row.shape[0]), max_new_tokens=max_new_tokens, eos_ids=eos,
                                sampler=sampler, draft=draft, cost=cost_model)
            stats.append(loop.run(decoder, state, on_step))
            rows.append(state.tokens)
    width = max(len(r) for r in rows)
    pad = _pad_id(model, eos)
    sequences = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)  # (B, L)
    return GenerationOutput(sequences=sequences.to(input_ids.device),
                            stats=stats[0] if len(stats) == 1 else GenerationStats.merge(stats))
