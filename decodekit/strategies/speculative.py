"""Speculative decoding with a draft model (Leviathan et al. 2023; Chen et al. 2023).

A small draft model proposes gamma tokens autoregressively from its own cache; the target model
checks all of them in one forward over [pending, d_1 .. d_gamma]. Greedy: draft token i is kept
while it equals the target's argmax after the tokens before it, and the target's own next token
follows the kept ones (a correction, or a bonus when all gamma are kept). Sampling: the standard
rejection rule (decodekit.core.sampling.rejection_sample) keeps the target's distribution exactly.
Both caches are rolled back to the committed tokens through their KV-cache managers.

No draft model at hand? Two helpers build one from the target itself:
- `truncated_draft(model, layers=k)`: its embeddings, first k decoder layers, final norm and head,
  sharing the target's weight tensors (no extra memory; low acceptance without training);
- `int8_draft(model)`: a copy whose Linear layers are dynamically quantized to int8 (CPU; high
  acceptance, about a quarter of the Linear weights' memory).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Sequence

import attrs
import torch

from decodekit.core.decoder import Decoder, DecodeState, Proposal, Verdict
from decodekit.core.kvcache import RowsCache
from decodekit.core.loop import forward_packed
from decodekit.core.params import param
from decodekit.core.sampling import draw, rejection_sample
from decodekit.core.types import Capabilities
from decodekit.errors import InputError, ModelNotSupportedError


@attrs.frozen(kw_only=True)
class SpeculativeParams:
    gamma: int = param(5, ge=1, le=64, help="draft tokens proposed per step (the start value when adaptive)")
    adaptive: bool = param(False, help="grow gamma by 1 after a fully accepted step, shrink it by 1 after a rejection")
    max_gamma: int = param(16, ge=1, le=64, help="the largest gamma adaptive mode may reach")

    def __attrs_post_init__(self) -> None:
        if self.adaptive and self.max_gamma < self.gamma:
            raise ValueError(f"max_gamma must be >= gamma ({self.gamma}) when adaptive=True, got {self.max_gamma}")


@attrs.define(eq=False)
class Drafted:
    """What the draft proposed in one step."""

    tokens: list[int]  # d_1 .. d_G
    probs: torch.Tensor | None  # (G, V) the draft's sampling distributions; None when greedy


class Speculative(Decoder):
    name = "speculative"
    description = "a draft model proposes gamma tokens, the target verifies them in one forward pass"
    capabilities = Capabilities(exact=True, supports_sampling=True, needs_draft_model=True)
    Params = SpeculativeParams
    # the sampling acceptance rule; a class attribute so that a test can plant a wrong one in a subclass
    acceptance_rule = staticmethod(rejection_sample)

    def start(self, state: DecodeState) -> None:
        self.gamma = self.params.gamma
        self.draft_rows: DraftRows | None = None  # the draft's cache, shared by the rows of this call

    def propose(self, state: DecodeState) -> Proposal:
        return self.propose_rows([self], [state])[0]

    def verify(self, state: DecodeState, proposal: Proposal, logits: torch.Tensor) -> Verdict:
        tokens = self.accept(state, proposal.plan, logits)  # logits (G + 1, V)
        self.commit(state, proposal.plan, tokens)
        return Verdict(tokens=tokens)  # pending + the accepted drafts stay cached (a chain)

    # -- propose: gamma tokens per row from the draft, every row through one draft forward -----------

    @classmethod
    def propose_rows(cls, decoders: Sequence["Speculative"], states: Sequence[DecodeState]) -> list[Proposal]:
        """[pending, d_1 .. d_gamma] per row; d_i the draft's argmax (or sample) after the committed tokens and
        the drafts before it. At most `remaining` tokens can be kept and the target adds one of its own, so a
        row drafts at most remaining - 1. Draft position i of every row goes through one packed forward."""
        shared = cls.draft_cache(decoders, states)
        for b, state in enumerate(states):
            # The loop may have cut the last step short of what `commit` saw (a stop string in a batch whose rows
            # decode on until every row has stopped): the draft forgets what it cached past the committed tokens.
            # What it keeps is a prefix of them (the committed tokens, then the drafts the target accepted).
            if shared.rows.lengths[b] > len(state.tokens) - 1:
                shared.rows.rollback(b, len(state.tokens) - 1)
        gammas = [min(d.gamma, s.remaining - 1) for d, s in zip(decoders, states)]
        drafted = [Drafted(tokens=[], probs=None) for _ in decoders]
        probs: list[list[torch.Tensor]] = [[] for _ in decoders]
        for i in range(max(gammas, default=0)):
            busy = [i < g for g in gammas]
            # what each row feeds: first the committed tokens the draft has not cached (pending at least),
            # then its last draft; a row with no draft left feeds its pending token, whose keys are dropped
            feeds = [(s.tokens[shared.rows.lengths[b]:] if i == 0 else [drafted[b].tokens[-1]]) if busy[b]
                     else [s.pending] for b, s in enumerate(states)]
            start = shared.rows.width
            logits = forward_packed(states[0].draft, shared.rows, [Proposal(tokens=f, outputs=[len(f) - 1]) for f in feeds])
            shared.rows.keep(start, [range(len(f)) if busy[b] else [] for b, f in enumerate(feeds)])
            for b, state in enumerate(states):
                if busy[b]:
                    cls.draw_next(state, drafted[b], probs[b], logits[b][-1])  # logits[b] (1, V)
        for d, p in zip(drafted, probs):
            d.probs = torch.stack(p) if p else None  # (G, V)
        return [Proposal(tokens=[s.pending] + d.tokens, plan=d) for s, d in zip(states, drafted)]  # chains

    @staticmethod
    def draft_cache(decoders: Sequence["Speculative"], states: Sequence[DecodeState]) -> "DraftRows":
        """The draft's cache for these rows: made on the first step; rows that left the target's forward leave it."""
        shared = decoders[0].draft_rows
        if shared is None:
            shared = DraftRows(rows=RowsCache(states[0].draft, lengths=[0] * len(decoders)), members=list(decoders))
            for decoder in decoders:
                decoder.draft_rows = shared
        shared.follow(decoders)
        return shared

    @staticmethod
    def draw_next(state: DecodeState, drafted: Drafted, probs: list[torch.Tensor], logits: torch.Tensor) -> None:
        """The draft's next token after logits (V,): its argmax, or a sample (whose distribution is kept)."""
        path = [list(drafted.tokens)]  # the draft's prefix: committed tokens + its drafts so far (logits processors)
        if state.sampler is None:
            drafted.tokens.append(int(state.scores(logits, path).argmax()))
            return
        q = state.probabilities(logits, path)  # (V,)
        drafted.tokens.append(int(draw(q, state.sampler.generator)))
        probs.append(q)

    # -- verify: which drafts the target keeps, and its own next token ----------------------------

    def accept(self, state: DecodeState, drafted: Drafted, logits: torch.Tensor) -> list[int]:
        """Greedy: keep drafts while they match the target's argmax. Sampling: the rejection rule."""
        drafts = drafted.tokens
        paths = state.chain(drafts)  # row i follows the first i drafts
        if state.sampler is None:
            targets = state.choose(logits, paths).tolist()  # (G + 1,)
            n = 0
            while n < len(drafts) and drafts[n] == targets[n]:
                n += 1
            return drafts[:n] + [targets[n]]
        p = state.probabilities(logits, paths)  # (G + 1, V)
        if not drafts:
            return [int(draw(p[0], state.sampler.generator))]
        n, token = self.acceptance_rule(torch.tensor(drafts), drafted.probs, p, state.sampler.generator)
        return drafts[:n] + [token]

    # -- commit: both caches back to the committed tokens; adapt gamma -----------------------------

    def commit(self, state: DecodeState, drafted: Drafted, tokens: list[int]) -> None:
        """The draft's cache back to the committed tokens; gamma adapts (the loop trims the target's cache)."""
        accepted = len(tokens) - 1
        start = len(state.tokens) - 1  # what the target cached before this step: every committed token but pending
        # the draft cached the committed tokens and d_1 .. d_G-1: keep what is still committed
        rows, row = self.draft_rows.rows, self.draft_rows.members.index(self)
        rows.rollback(row, min(rows.lengths[row], start + len(tokens)))
        if self.params.adaptive and drafted.tokens:
            if accepted == len(drafted.tokens):
                self.gamma = min(self.gamma + 1, self.params.max_gamma)
            else:
                self.gamma = max(self.gamma - 1, 1)


@attrs.define(eq=False)
class DraftRows:
    """The draft model's cache for the rows of one generate() call, and which row's strategy owns each row."""

    rows: RowsCache
    members: list[Any]  # the rows' Speculative instances, in cache order

    def follow(self, decoders: Sequence[Any]) -> None:
        """Rows that have left the target's forward leave the draft's too."""
        if self.members != list(decoders):
            self.rows.select([self.members.index(d) for d in decoders])
            self.members = list(decoders)


# -- a draft built from the target itself -----------------------------------------------------------

def _layer_count(config: Any) -> int:
    count = getattr(config, "num_hidden_layers", None)
    if not isinstance(count, int):
        raise ModelNotSupportedError(
            f"truncated_draft needs a config with num_hidden_layers; {type(config).__name__} has none")
    return count


def _refuse_sharded(model: Any, what: str) -> None:
    """A draft built from a sharded model's slices would lose its tensor-parallel plan: refused, saying what works."""
    from decodekit.core.backend import is_sharded

    if is_sharded(model):
        raise ModelNotSupportedError(
            f"{what} needs a model every rank holds whole, got one sharded over ranks (tensor parallelism); build "
            f"the draft from an unsharded copy on each rank (decodekit.models.load_default(dtype), or "
            f"load_pretrained without tp_size), or pass a draft model loaded with tp_size")


def truncated_draft(model: Any, layers: int) -> Any:
    """A cheaper draft from the target: its embeddings, first `layers` decoder layers, final norm and head.

    The draft is a model of the target's own class, built from a copy of its config with fewer
    layers; every weight is the target's own tensor (shared, not copied), so it costs almost no
    memory and has the target's vocabulary by construction. Its hidden state after layer k goes
    straight through the target's norm and head (the "early exit" draft of self-speculative decoding).
    """
    from decodekit.core.backend import is_hf_model, model_from_config

    if not is_hf_model(model):
        raise ModelNotSupportedError(f"truncated_draft needs a transformers PreTrainedModel, got {type(model).__name__}")
    _refuse_sharded(model, "truncated_draft")
    text = model.config.get_text_config(decoder=True)
    total = _layer_count(text)
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= total:
        raise InputError(f"truncated_draft: layers must be an integer in [1, {total}] (the model's layer count), "
                         f"got {layers!r}")
    config = copy.deepcopy(model.config)
    sub = config.get_text_config(decoder=True)
    sub.num_hidden_layers = layers
    if isinstance(getattr(sub, "layer_types", None), (list, tuple)):
        sub.layer_types = list(sub.layer_types)[:layers]
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation must not move the global RNG
        draft = model_from_config(config, model.dtype, model.config._attn_implementation)
    source = model.state_dict()
    wanted = draft.state_dict()
    missing = [k for k in wanted if k not in source or source[k].shape != wanted[k].shape]
    if missing:
        raise ModelNotSupportedError(
            f"truncated_draft cannot map {type(model).__name__}'s weights onto {layers} layers "
            f"(no matching tensor for {missing[:3]})")
    draft.load_state_dict({k: source[k] for k in wanted}, strict=True, assign=True)
    draft.generation_config = copy.deepcopy(model.generation_config)
    return draft.to(model.device).eval()


def int8_draft(model: Any) -> Any:
    """A draft that is the target with every nn.Linear dynamically quantized to int8 (a copy; CPU only).

    Uses torch.ao.quantization.quantize_dynamic, which PyTorch has deprecated in favour of torchao
    but still ships; its deprecation warnings are silenced here. Needs float32 weights.
    """
    from torch.ao.quantization import quantize_dynamic

    from decodekit.core.backend import is_hf_model

    if not is_hf_model(model):
        raise ModelNotSupportedError(f"int8_draft needs a transformers PreTrainedModel, got {type(model).__name__}")
    _refuse_sharded(model, "int8_draft")
    if model.dtype != torch.float32 or model.device.type != "cpu":
        raise InputError(f"int8_draft needs a float32 model on the CPU, got {model.dtype} on {model.device}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        draft = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)
    return draft.eval()
