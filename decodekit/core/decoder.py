"""The abstract Decoder interface and the per-call decoding state every strategy works on."""

from __future__ import annotations

import abc
import time
from typing import Any, Callable, ClassVar, Mapping, Sequence

import attrs
import torch

from decodekit.core.backend import HFBackend
from decodekit.core.kvcache import KVCacheManager
from decodekit.core.masks import StepLayout, additive_mask, causal_layout, position_ids
from decodekit.core.types import Capabilities


@attrs.frozen(kw_only=True)
class NoParams:
    """The parameter class of a strategy that takes none."""


@attrs.define(eq=False)
class DecodeState:
    """Everything one sequence's decode needs; built fresh by each generate() call.

    Invariant between steps: `kv` holds every committed token but the last one (the *pending*
    token, whose keys and values the next forward computes). `tokens` is prompt + generated.
    """

    backend: HFBackend
    kv: Any  # the row's cache: a KVCacheManager (a step-contract strategy's own), else a RowLength (its length)
    tokens: list[int]
    prompt_length: int
    max_new_tokens: int
    eos_ids: frozenset[int]
    sampler: Any = None  # decodekit.core.sampling.Sampler when do_sample=True, else None (greedy)
    draft: HFBackend | None = None
    cost: Any = None  # the forward cost model (decodekit.core.costmodel), resolved by forward_cost()
    # HF-style logits processors, (input_ids (1, L), scores (1, V)) -> (1, V), applied in order to every row
    # whose next token is chosen, with that row's own prefix; run on `processing_device` (the input's device)
    processors: Sequence[Any] = ()
    processing_device: torch.device | None = None
    # stop criteria beyond eos and max_new_tokens (stop strings, ...): prefix -> True when it ends the sequence
    stop_checks: Sequence[Callable[[list[int]], bool]] = ()
    forwards: int = 0
    tokens_computed: int = 0

    @property
    def pending(self) -> int:
        """The last committed token: not yet in the cache, first input of the next forward."""
        return self.tokens[-1]

    @property
    def remaining(self) -> int:
        """How many more tokens may still be committed."""
        return self.max_new_tokens - (len(self.tokens) - self.prompt_length)

    def forward(self, input_ids: Sequence[int] | torch.Tensor, layout: StepLayout | None = None,
                logits_to_keep: int | Sequence[int] = 0) -> torch.Tensor:
        """One forward of the target model over new tokens placed after the cache.

        layout None: a plain causal chain (the model's own mask). Otherwise the step's who-sees-whom
        structure, turned into an additive 4-D mask and position ids by the mask builder.
        logits_to_keep: 0 for every token's logits, k for the last k, or a list of the token indices
        whose logits are needed (the lm head then skips the others).
        Returns logits (T or K, V); the cache grows by T.
        """
        if not isinstance(self.kv, KVCacheManager):
            raise RuntimeError("state.forward() belongs to the pre-batching contract (a strategy overriding step); "
                               "a strategy implementing propose/verify returns its tokens from propose and gets "
                               "their logits in verify: decodekit's loop runs the forward")
        ids = torch.as_tensor(input_ids, dtype=torch.long)  # (T,)
        start = self.kv.length
        if layout is None:
            positions = torch.arange(start, start + ids.shape[0])  # (T,)
            mask = None
        else:
            positions = position_ids(layout, start)  # (T,)
            mask = additive_mask(layout, start, self.backend.dtype, self.backend.device)  # (1, 1, T, S)
        self.forwards += 1
        if self.forwards > 1:  # the prefill is not part of a step's cost
            self.tokens_computed += int(ids.shape[0])
        if not isinstance(logits_to_keep, int):
            logits_to_keep = torch.as_tensor(logits_to_keep, dtype=torch.long)  # (K,)
        began = time.perf_counter()
        logits = self.backend.forward(ids, positions, self.kv.cache, mask, logits_to_keep)
        observe = getattr(self.cost, "observe", None)
        # every step's forward refines the cost model; on several ranks (whose timings differ, and whose
        # plans must not) only the loop's steps do, with rank 0's timing
        if observe is not None and self.forwards > 1 and self.backend.ranks is None:
            observe(int(ids.shape[0]), start, time.perf_counter() - began)
        return logits

    def forward_cost(self) -> Any:
        """The cost model of this model's forward on this machine (measured on first use, then cached)."""
        if self.cost is None:
            from decodekit.core.costmodel import cost_model_for

            self.cost = cost_model_for(self.backend.model)
        return self.cost

    # -- choosing tokens: the scores model.generate computes, row by row ----------------------------

    @staticmethod
    def chain(draft: Sequence[int]) -> list[list[int]]:
        """Paths of a chain forward over [pending, *draft]: row i follows the first i drafted tokens."""
        return [list(draft[:i]) for i in range(len(draft) + 1)]

    def scores(self, logits: torch.Tensor, paths: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """Next-token scores as model.generate computes them: float32 logits, then the logits processors.

        logits (V,) or (T, V). Row i follows the committed tokens and then `paths[i]` (the draft tokens
        between the pending token and that row: [] for the row after the pending token); `chain(draft)`
        gives the paths of a chain. Without processors the paths are not needed. Returns (V,) or (T, V) float32.
        """
        scores = logits.float()  # (T, V) or (V,)
        if not self.processors:
            return scores
        rows = scores.reshape(-1, scores.shape[-1])  # (T, V)
        if paths is None:
            if rows.shape[0] != 1:
                raise RuntimeError(f"scores() of {rows.shape[0]} rows needs their paths (logits processors are on)")
            paths = [[]]
        if len(paths) != rows.shape[0]:
            raise RuntimeError(f"scores() got {rows.shape[0]} rows of logits but {len(paths)} paths")
        device = self.processing_device or rows.device
        out = []
        for row, path in zip(rows, paths):
            prefix = torch.tensor([self.tokens + list(path)], dtype=torch.long, device=device)  # (1, L)
            processed = row[None].to(device, copy=True)  # (1, V): processors may write in place
            for processor in self.processors:
                processed = processor(prefix, processed)  # (1, V)
            out.append(processed[0].to(rows.device))
        return torch.stack(out).reshape(scores.shape)  # (T, V) or (V,)

    def choose(self, logits: torch.Tensor, paths: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """The token the model emits after each row of logits (V,) or (T, V): argmax, or a sample.

        `paths` as in `scores`: needed for more than one row when logits processors are on.
        """
        scores = self.scores(logits, paths)  # (T, V) or (V,)
        if self.sampler is None:
            return scores.argmax(dim=-1)  # (T,) or ()
        return self.sampler.sample(scores)

    def probabilities(self, logits: torch.Tensor, paths: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """The sampling distribution after each row (do_sample=True): processors, then temperature / top-k / top-p."""
        return self.sampler.probabilities(self.scores(logits, paths))  # (T, V) or (V,)


@attrs.define(eq=False)
class Proposal:
    """What one row puts through the model in a step: the loop packs every row's proposal into one forward.

    tokens: [pending, *drafted]: the pending token first (its keys and values are computed now).
    layout: who sees whom among them and where each sits (decodekit.core.masks: tree_layout, ...);
    None for a chain (token i sees tokens 0..i and sits at offset i).
    outputs: indices of the tokens whose logits `verify` needs, in that order; None for every token.
    plan: anything the strategy wants handed back to `verify` with the logits (its record of the step).
    """

    tokens: list[int]
    layout: StepLayout | None = None
    outputs: Sequence[int] | None = None
    plan: Any = None

    def step_layout(self) -> StepLayout:
        """The layout, a chain when none was given."""
        return self.layout if self.layout is not None else causal_layout(len(self.tokens))


@attrs.frozen(kw_only=True)
class Verdict:
    """What `verify` decided: the committed tokens, and which proposed tokens' keys and values stay cached.

    keep: strictly increasing indices into the proposal's tokens, one per committed token, the pending
    token's 0 first (the cache then holds every committed token but the new last one). None: the first
    len(tokens) proposal tokens (a chain's accepted prefix).
    """

    tokens: list[int]
    keep: Sequence[int] | None = None

    def kept(self) -> list[int]:
        return list(range(len(self.tokens))) if self.keep is None else list(self.keep)


class Decoder(abc.ABC):
    """A decoding strategy: decides what goes through the model in one forward and what is kept.

    Subclasses set `name`, `capabilities` and `Params` (a frozen attrs class of validated
    parameters) and implement `propose` and `verify`: each step the loop asks every active row's
    strategy what it puts through the model (`propose`), packs every row into one forward of the
    target model, and hands each row its logits (`verify`), which returns the committed tokens and the
    positions whose keys and values stay cached. The strategy holds no forward call of the target.
    A fresh instance is built for every row of every generate() call.

    Strategies written before batching override `step` instead (one row, its own forward); they keep
    working, their rows decoded one after another. docs/writing-plugins.md shows the move.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    Params: ClassVar[type] = NoParams
    description: ClassVar[str] = ""

    def __init__(self, params: Any) -> None:
        self.params = params

    def start(self, state: DecodeState) -> None:
        """Called once after the prefill (the prompt is cached, its next token committed)."""

    def report(self) -> Mapping[str, Any]:
        """Figures of this decode for GenerationStats.details (e.g. how often a window ran); none by default."""
        return {}

    def propose(self, state: DecodeState) -> Proposal:
        """What this row puts through the model this step: its pending token and any drafts, and their tree."""
        raise NotImplementedError(f"strategy {self.name!r} implements neither propose/verify nor step")

    def verify(self, state: DecodeState, proposal: Proposal, logits: torch.Tensor) -> Verdict:
        """Given the logits (K, V) of `proposal.outputs` (or of every proposed token), what this row commits.

        Returns the committed tokens (at least one), in order, and which proposed tokens' keys and values
        stay cached; the loop cuts the tokens at eos, a stop string or max_new_tokens.
        """
        raise NotImplementedError(f"strategy {self.name!r} implements neither propose/verify nor step")

    @classmethod
    def propose_rows(cls, decoders: Sequence["Decoder"], states: Sequence[DecodeState]) -> list[Proposal]:
        """Every active row's proposal this step (decoders[b] and states[b] are row b's; rows of one call
        share the strategy class). The default asks each row's `propose`; a strategy whose proposing runs a
        model of its own (speculative decoding's draft) overrides this to run it once for all rows."""
        return [decoder.propose(state) for decoder, state in zip(decoders, states)]

    @classmethod
    def batched(cls) -> bool:
        """Whether the loop drives this strategy (propose/verify, rows packed together) rather than its own `step`."""
        return cls.step is Decoder.step

    def step(self, state: DecodeState) -> Sequence[int]:
        """The pre-batching contract, one row at a time: propose, forward once, verify, commit.

        Returns the tokens committed by this step (at least one), in order. On return `state.kv`
        must hold every committed token but the last, the step's tokens included; the loop appends
        the tokens to `state.tokens` and cuts them at eos or max_new_tokens. A strategy that overrides
        this is run row by row; the default runs its propose/verify on one row.
        """
        proposal = self.propose(state)
        start = state.kv.length
        logits = state.forward(proposal.tokens, proposal.layout,
                               logits_to_keep=0 if proposal.outputs is None else list(proposal.outputs))  # (K, V)
        verdict = self.verify(state, proposal, logits)
        state.kv.keep_appended(start, verdict.kept())
        return verdict.tokens
