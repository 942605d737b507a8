"""The one decode loop: prefill, then steps until every row stops; stopping and statistics live here.

The loop owns the target model's forward. Each step every active row's strategy proposes what it puts
through the model (`Decoder.propose`); the loop packs every row into one forward of shape (B, T), with
per-row masks and positions over the rows' shared cache, hands each row its logits (`Decoder.verify`),
keeps the positions each row's verdict keeps, cuts the committed tokens at the first stop and commits
them. Rows that stop leave the forward.

A strategy written before batching (it overrides `Decoder.step`, running its own forward) is driven by
`run_one` instead, one row at a time, with the same prefill, stopping and statistics.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import attrs
import torch

from decodekit.core import ranks as ranks_sync
from decodekit.core.backend import HFBackend
from decodekit.core.costmodel import synchronize
from decodekit.core.decoder import Decoder, DecodeState, Proposal, Verdict
from decodekit.core.kvcache import RowsCache
from decodekit.core.masks import packed_mask, packed_positions
from decodekit.core.planner import prefill_groups
from decodekit.core.types import GenerationStats

StepCallback = Callable[[list[int]], None]


# -- phases shared by both drivers --------------------------------------------------------------------

def cut_at_stop(state: DecodeState, proposed: Sequence[int]) -> tuple[list[int], bool]:
    """Keep a step's tokens up to the first that ends the sequence (inclusive) and within max_new_tokens.

    A token ends the sequence when it is an eos id or when, appended, it makes a stop check true (a stop
    string completed, ...): checked after every token, as greedy decoding checks after every step.
    """
    tokens = list(proposed)[: state.remaining]
    for i, token in enumerate(tokens):
        if token in state.eos_ids:
            return tokens[: i + 1], True
        if state.stop_checks:
            prefix = state.tokens + tokens[: i + 1]
            if any(check(prefix) for check in state.stop_checks):
                return tokens[: i + 1], True
    return tokens, state.remaining - len(tokens) <= 0


def commit(state: DecodeState, tokens: list[int], histogram: dict[int, int], on_step: StepCallback | None) -> None:
    state.tokens.extend(tokens)
    histogram[len(tokens)] = histogram.get(len(tokens), 0) + 1
    if on_step is not None:
        on_step(tokens)


def row_stats(state: DecodeState, decoder: Decoder | None, histogram: dict[int, int], seconds: float,
              cut: int) -> GenerationStats:
    return GenerationStats(steps=state.forwards, new_tokens=len(state.tokens) - state.prompt_length,
                           accepted_histogram=histogram, seconds=seconds, tokens_computed=state.tokens_computed,
                           cut_tokens=cut, details=decoder.report() if decoder is not None else {})


def check_verdict(decoder: Decoder, proposal: Proposal, verdict: Verdict) -> list[int]:
    """The verdict's kept offsets, after checking that they keep exactly the committed tokens but the last."""
    keep = verdict.kept()
    if not verdict.tokens:
        raise RuntimeError(f"strategy {decoder.name!r} committed no token in a step")
    if len(keep) != len(verdict.tokens) or keep[0] != 0 or keep[-1] >= len(proposal.tokens) \
            or any(b <= a for a, b in zip(keep, keep[1:])):
        raise RuntimeError(
            f"strategy {decoder.name!r} broke the cache invariant: {len(verdict.tokens)} tokens committed, "
            f"keeping proposed positions {keep} of {len(proposal.tokens)} (one per committed token, 0 first, increasing)")
    return keep


# -- the packed forward -----------------------------------------------------------------------------

def _wanted(proposal: Proposal) -> list[int]:
    return list(range(len(proposal.tokens))) if proposal.outputs is None else list(proposal.outputs)


def forward_packed(backend: HFBackend, rows: RowsCache, proposals: Sequence[Proposal]) -> list[torch.Tensor]:
    """One forward of every row's proposal (row b of `rows` runs proposals[b]); each row's logits (K_b, V)
    for the tokens it asked for. Every row of the cache grows by T, the longest proposal.

    One row whose proposal is a chain runs with no mask (the model's own causal mask, as model.generate
    runs); otherwise the mask builder gives each row its tree over its own cached positions.
    """
    cached, lengths = rows.width, list(rows.lengths)
    size = max(len(p.tokens) for p in proposals)
    ids = torch.tensor([p.tokens + [p.tokens[0]] * (size - len(p.tokens)) for p in proposals])  # (B, T)
    layouts = [p.step_layout() for p in proposals]
    positions = packed_positions(layouts, lengths)  # (B, T)
    mask = None
    if len(proposals) > 1 or proposals[0].layout is not None:
        mask = packed_mask(layouts, lengths, cached, backend.dtype, backend.device)  # (B, 1, T, S + T)
    wanted = [_wanted(p) for p in proposals]
    union = sorted(set().union(*wanted))
    # the lm head runs on the union of the rows' wanted positions: a suffix as a count, else as indices
    keep: int | torch.Tensor = len(union) if union == list(range(size - len(union), size)) else torch.tensor(union)
    logits = backend.forward_rows(ids, positions, rows.cache, mask, keep)  # (B, K, V)
    where = {position: i for i, position in enumerate(union)}
    return [logits[b, [where[i] for i in want]] for b, want in enumerate(wanted)]  # each (K_b, V)


def timed_step(states: Sequence[DecodeState], rows: RowsCache,
               proposals: Sequence[Proposal]) -> tuple[list[torch.Tensor], float]:
    """`forward_packed` as a step of the target: counted in each row's statistics; (logits, wall seconds)."""
    began = time.perf_counter()
    logits = forward_packed(states[0].backend, rows, proposals)
    synchronize(logits[0].device)  # on a GPU the clock then covers the kernels, not only their launch
    seconds = time.perf_counter() - began
    for state, proposal in zip(states, proposals):
        state.forwards += 1
        state.tokens_computed += len(proposal.tokens)
    return logits, seconds


def observe_step(cost: object | None, proposals: Sequence[Proposal], cached: int, seconds: float) -> None:
    """Every step's forward refines the cost model: what the packed forward put through, over a dense cache
    of `cached` columns."""
    if cost is not None:
        size = max(len(p.tokens) for p in proposals)
        cost.observe(len(proposals) * size, cached, seconds, len(proposals))


def confirm_proposals(states: Sequence[DecodeState], step: int, active: Sequence[int],
                      proposals: Sequence[Proposal]) -> None:
    """On a model sharded over several ranks: every rank puts the same proposals through this step's forward."""
    ranks = states[0].backend.ranks
    if ranks is not None:
        digests = [ranks_sync.proposals_digest(p.tokens, p.outputs) if p.layout is None else
                   ranks_sync.proposals_digest(p.tokens, p.outputs, p.layout.offsets, p.layout.visible)
                   for p in proposals]
        ranks_sync.confirm_proposals(ranks, step, active, digests)


# -- the loop over a batch ----------------------------------------------------------------------------

@attrs.define(eq=False)
class _Rows:
    """The bookkeeping of a batch: the rows' states and strategies, histograms and cut counts, which rows are active."""

    decoders: list[Decoder]
    states: list[DecodeState]
    histograms: list[dict[int, int]] = attrs.Factory(lambda self: [{} for _ in self.states], takes_self=True)
    cut: list[int] = attrs.Factory(lambda self: [0] * len(self.states), takes_self=True)
    # indices of the rows still decoding, in the order of their rows in the cache
    active: list[int] = attrs.Factory(lambda self: list(range(len(self.states))), takes_self=True)
    stopped: dict[int, int] = attrs.Factory(dict)  # no eos criterion: row -> new tokens where it first stopped
    forwards: int = 0  # packed forwards of the target, the prefill's included


def prefill(states: Sequence[DecodeState], rows: RowsCache, cost: object | None = None) -> tuple[list[int], int]:
    """Cache every row's whole prompt; the first new token of each row from its last logits.

    Rows of different lengths go through in groups (`planner.prefill_groups`: one packed forward per
    group, each group padded to its own longest prompt only) when the cost model says that is faster
    than padding every prompt to the longest; the groups' caches are then stacked into `rows`.
    Returns the first tokens and the number of forwards taken.
    """
    lengths = [len(s.tokens) for s in states]
    groups = prefill_groups(lengths, getattr(cost, "prompt_seconds", None))
    firsts: list[int] = [0] * len(states)
    parts = []
    for group in groups:
        part = rows if len(groups) == 1 else RowsCache(rows.backend, [0] * len(group))
        proposals = [Proposal(tokens=list(states[b].tokens), outputs=[lengths[b] - 1]) for b in group]
        confirm_proposals(states, 0, group, proposals)  # the prompts are the same on every rank
        logits = forward_packed(states[0].backend, part, proposals)
        part.keep(0, [range(lengths[b]) for b in group])
        for b, row in zip(group, logits):
            states[b].forwards += 1  # a forward, but not a step: its tokens are not a step's cost
            firsts[b] = int(states[b].choose(row[-1]))
        parts.append((group, part))
    if len(groups) > 1:
        rows.stack(parts)
    ranks_sync.confirm_commits(states[0].backend.ranks, 0, range(len(states)), [[t] for t in firsts], 0.0)
    return firsts, len(groups)


def run(decoders: Sequence[Decoder], states: Sequence[DecodeState], rows: RowsCache,
        on_step: StepCallback | None = None, cost: object | None = None,
        pad_finished: bool = True) -> tuple[list[GenerationStats], int]:
    """Decode every row together; each `states[b].tokens` ends as its prompt + generated tokens.

    decoders[b] and states[b] belong to row b (a fresh strategy instance per row); `rows` is their
    shared, empty cache. pad_finished=False (no eos criterion, as model.generate decides) keeps a row
    that met a stop string decoding until every row has stopped, then gives every row as many new
    tokens as the last one to stop: what model.generate returns then. Returns each row's statistics and the
    number of forwards the batch took (the prefill's included).
    """
    began = time.perf_counter()
    book = _Rows(list(decoders), list(states))
    firsts, book.forwards = prefill(states, rows, cost)
    for b, first in enumerate(firsts):
        _commit_row(book, b, [first], on_step, pad_finished)
    _leave(book, rows, list(range(len(states))))
    for b in book.active:
        decoders[b].start(states[b])
    while book.active:
        _step(book, rows, on_step, cost, pad_finished)
    seconds = time.perf_counter() - began
    stats = [row_stats(s, d, h, seconds, c) for s, d, h, c in zip(states, decoders, book.histograms, book.cut)]
    return stats, book.forwards


def _step(book: _Rows, rows: RowsCache, on_step: StepCallback | None, cost: object | None,
          pad_finished: bool) -> None:
    """One packed step: every active row proposes, one forward, every row verifies, keeps and commits."""
    active = list(book.active)
    cached = rows.width  # the columns every row's queries span in this step's forward
    if cost is not None:  # what each row's planner weighs its tokens at: the packed forward
        cost.rows, cost.width = len(active), cached
    decoders, states = [book.decoders[b] for b in active], [book.states[b] for b in active]
    proposals = type(decoders[0]).propose_rows(decoders, states)
    if cost is not None:  # the planning rows have offered what each step size is worth: bound the next step
        cost.settle(cached)
    step = book.forwards  # the prefill's forwards came first
    confirm_proposals(states, step, active, proposals)
    logits, seconds = timed_step(states, rows, proposals)
    book.forwards += 1
    start = rows.width - max(len(p.tokens) for p in proposals)
    keeps, verdicts = [], []
    for b, proposal, row_logits in zip(active, proposals, logits):
        verdict = book.decoders[b].verify(book.states[b], proposal, row_logits)
        keeps.append(check_verdict(book.decoders[b], proposal, verdict))
        verdicts.append(verdict)
    rows.keep(start, keeps)
    committed = []
    for i, (b, verdict) in enumerate(zip(active, verdicts)):
        state = book.states[b]
        before = len(state.tokens)
        tokens = _commit_row(book, b, verdict.tokens, on_step, pad_finished)
        committed.append(tokens)
        if len(tokens) < len(verdict.tokens):
            rows.rollback(i, before - 1 + len(tokens))
            book.cut[b] += len(verdict.tokens) - len(tokens)
    # on several ranks: the same tokens everywhere, and rank 0's timing for every rank's cost model
    seconds = ranks_sync.confirm_commits(states[0].backend.ranks, step, active, committed, seconds)
    observe_step(cost, proposals, cached, seconds)
    _leave(book, rows, active)


def _commit_row(book: _Rows, b: int, proposed: list[int], on_step: StepCallback | None,
                pad_finished: bool) -> list[int]:
    """Cut a row's step at its first stop and commit it; a row that stopped leaves `book.active`."""
    state = book.states[b]
    if state.remaining <= 0:  # a row whose count another row's stop has just settled (run together)
        if b in book.active:
            book.active.remove(b)
        return []
    tokens, done = cut_at_stop(state, proposed)
    if done and not pad_finished and len(book.states) > 1:
        # the row decodes on until every row has stopped: its step is not cut, only its stop count noted
        stop_count = len(state.tokens) - state.prompt_length + len(tokens)
        tokens = list(proposed)[: state.remaining]
        commit(state, tokens, book.histograms[b], on_step)
        done = _stop_together(book, b, stop_count)
    else:
        commit(state, tokens, book.histograms[b], on_step)
    if done and b in book.active:
        book.active.remove(b)
    return tokens


def _stop_together(book: _Rows, b: int, stop_count: int) -> bool:
    """No eos criterion: a row that met a stop (after `stop_count` new tokens) decodes on until every row has;
    then every row ends with as many new tokens as the one that stopped last. Returns whether row b is done now.
    """
    state = book.states[b]
    book.stopped.setdefault(b, stop_count)
    state.stop_checks = ()
    if len(book.stopped) < len(book.states):
        return state.remaining <= 0
    width = max(book.stopped.values())
    for other in book.states:  # every row ends with `width` new tokens
        other.max_new_tokens = width
        del other.tokens[other.prompt_length + width:]
    for other in list(book.active):
        if book.states[other].remaining <= 0:
            book.active.remove(other)
    return state.remaining <= 0  # row b may be the last to stop and still short of another row's count


def _leave(book: _Rows, rows: RowsCache, before: list[int]) -> None:
    """Rows that stopped this step leave the cache; the others keep their order."""
    if book.active == before:
        return
    rows.select([before.index(b) for b in book.active])
    for i, b in enumerate(book.active):
        book.states[b].kv = rows.row(i)


# -- a strategy of the pre-batching contract: one row at a time -------------------------------------

def run_one(decoder: Decoder, state: DecodeState, on_step: StepCallback | None = None) -> GenerationStats:
    """Decode one row with a strategy that runs its own forward (`Decoder.step`); `state.kv` is the row's own cache."""
    began = time.perf_counter()
    histogram: dict[int, int] = {}
    cut = 0
    logits = state.forward(state.tokens, layout=None, logits_to_keep=1)  # (1, V): the prefill
    first, done = cut_at_stop(state, [int(state.choose(logits[-1]))])
    ranks_sync.confirm_commits(state.backend.ranks, 0, [0], [first], 0.0)
    commit(state, first, histogram, on_step)
    if not done:
        decoder.start(state)
    while not done:
        before = len(state.tokens)
        proposed = list(decoder.step(state))
        if not proposed:
            raise RuntimeError(f"strategy {decoder.name!r} committed no token in a step")
        if state.kv.length != before - 1 + len(proposed):
            raise RuntimeError(
                f"strategy {decoder.name!r} broke the cache invariant: {len(proposed)} tokens committed, "
                f"cache holds {state.kv.length} positions, expected {before - 1 + len(proposed)}")
        tokens, done = cut_at_stop(state, proposed)
        if len(tokens) < len(proposed):
            state.kv.rollback(before - 1 + len(tokens))
            cut += len(proposed) - len(tokens)
        ranks_sync.confirm_commits(state.backend.ranks, state.forwards - 1, [0], [tokens], 0.0)
        commit(state, tokens, histogram, on_step)
    return row_stats(state, decoder, histogram, time.perf_counter() - began, cut)
