"""Lookahead decoding (Fu, Bailis, Stoica, Zhang, ICML 2024): Jacobi n-grams verified in the same pass.

One forward pass carries two branches after the pending token:
- the lookahead branch: a window of N-1 levels by W columns. Column c's tokens form a diagonal
  trajectory: level 0 is a chain (column c sees level-0 columns 0..c), level l of column c sees the
  level-0 chain up to c and levels 1..l of its own column. Every step each column advances one Jacobi
  iteration: the model's output at the last level becomes a new level, the oldest level drops out, and
  each column yields an n-gram (its N-1 levels plus that output) for the pool.
- the verification branch: at most G candidates, merged into a trie: first (C > 0) the text that
  followed the longest earlier matches of the committed suffix, then the pool's candidates for the
  pending token. Greedy verification accepts the longest candidate prefix that matches the model's
  own argmax, plus the bonus token the model predicts after it: up to max(N - 1, L) + 1 tokens per
  step (N with C=0, as in the paper).
Both branches are one tree rooted at the pending token (the branches never see each other), so the
mask builder's tree layout gives the "2-in-1" mask and position ids. Only the pending token's and the
accepted tokens' keys and values stay in the cache.

Two modes:
- fixed (any of W, N, G given): the algorithm above with those sizes every step, as in the paper.
- planned (W, N and G all unset, the default): every step the step planner (decodekit.core.planner)
  chooses which candidate prefixes go through and how many window columns run, from this decode's
  acceptance rates and the measured cost of a forward on this machine (decodekit.core.costmodel):
  wide on a GPU, whose cost curve is flat, narrow or none on a CPU whose curve is steep.
"""

from __future__ import annotations

import random
from typing import Any

import attrs
import torch

from decodekit.core.decoder import Decoder, DecodeState, Proposal, Verdict
from decodekit.core.masks import tree_layout
from decodekit.core.params import param
from decodekit.core.planner import Draft, Extra, StepPlanner, matched_length
from decodekit.core.types import Capabilities
from decodekit.strategies.ngram_pool import ContextIndex, NgramPool, Trie

CONTEXT = 4  # the longest suffix the context index matches

# The fixed mode's sizes where a parameter is unset (tuned for 2-core CPUs, see docs/lookahead.md).
FIXED_DEFAULTS = {"W": 1, "N": 5, "G": 4, "C": 2, "L": 8}
# The planned mode's ceilings: the planner puts through what pays, up to these.
PLANNED = {"W": 16, "N": 4, "G": 12, "C": 4, "L": 16}
PLANNED_WIDTHS = (1, 2, 4, 8, 16)  # window widths the planner chooses among (0: no window)
# The window's worth, in tokens committed later per column-step, before this decode has measured it.
WINDOW_PRIOR_YIELD, WINDOW_PRIOR_WEIGHT = 0.05, 20.0


@attrs.frozen(kw_only=True)
class LookaheadParams:
    # Unset W, N and G: planned mode. Give any of them (the paper's A100 setting is W=15, N=5, G=15, and
    # C=0 for its pool alone) for the fixed algorithm; the others then take FIXED_DEFAULTS.
    W: int | None = param(None, kind=int, ge=1, le=64,
                          help="window width: Jacobi columns advanced per step (unset with N and G: planned)")
    N: int | None = param(None, kind=int, ge=2, le=16,
                          help="n-gram size: N-1 window levels; a pool candidate commits at most N tokens")
    G: int | None = param(None, kind=int, ge=0, le=64,
                          help="candidates verified per step, and kept per pool key (0: no verification)")
    pool_from_prompt: bool = param(True, help="also seed the pool with the prompt's and the output's n-grams")
    C: int | None = param(None, kind=int, ge=0, le=16,
                          help="of the G candidates, how many may be context candidates: what followed the "
                               "longest earlier matches of the text's end (unset: 2 fixed, 4 planned)")
    L: int | None = param(None, kind=int, ge=1, le=32,
                          help="context candidate length: at most L + 1 tokens committed per step from one "
                               "(unset: 8 fixed, 16 planned)")
    idle_window: str = param("auto", choices=("auto", "on", "off"),
                             help="fixed mode: on a step with no candidate to verify, run the window anyway (on, "
                                  "as the paper does) or make it a one-token forward (off); auto: on when W > 1")

    @property
    def planned(self) -> bool:
        """Whether the step planner sizes every step (W, N and G all unset)."""
        return self.W is None and self.N is None and self.G is None

    def sizes(self) -> "LookaheadParams":
        """Every size set: the fixed mode's values, or the planned mode's ceilings, where unset."""
        fill = PLANNED if self.planned else FIXED_DEFAULTS
        return attrs.evolve(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})


def choose_candidates(params: LookaheadParams, context: ContextIndex, pool: NgramPool, pending: int,
                      room: int) -> list[tuple[int, ...]]:
    """At most G: context candidates first (a long match predicts well), then the pool's for `pending`.

    `room`: how many tokens may still come after the bonus token; every candidate is cut to it.
    State-free, so offline tools (examples/candidate_ceiling.py) replay exactly what a step verifies.
    """
    return [d.tokens for d in candidate_drafts(params, context, pool, pending, room)]


def candidate_drafts(params: LookaheadParams, context: ContextIndex, pool: NgramPool, pending: int,
                     room: int) -> list[Draft]:
    """`choose_candidates` with each candidate's source, for the planner's acceptance model:
    "context:K" (a match of K tokens) or "pool:window" / "pool:text" (who made the n-gram)."""
    params = params.sizes()
    found = [Draft(tokens=c, source=f"context:{k}")
             for c, k in context.matches(min(params.C, params.G), min(params.L, room))] if params.C else []
    found += [Draft(tokens=c, source=f"pool:{pool.origin(pending, c)}")
              for c in pool.candidates(pending, min(params.N - 1, room))]
    return found[: params.G]


@attrs.define(eq=False)
class StepPlan:
    """What goes through one forward: [pending, window (level-major), trie nodes]."""

    tokens: list[int]
    parents: list[int]
    last_level: list[int]  # per window column run this step: the index of its last level's token
    trie: Trie
    drafts: list[Draft]  # the candidates in the trie, with their sources

    @property
    def trie_start(self) -> int:
        return len(self.tokens) - len(self.trie)

    def output_rows(self) -> list[int]:
        """Tokens whose logits the step reads: the pending token, each run column's last level, the trie."""
        return [0, *self.last_level, *range(self.trie_start, len(self.tokens))]


def window_layout(columns: list[list[int]], width: int) -> tuple[list[int], list[int], list[int]]:
    """The first `width` columns of the window after the pending token (index 0), level-major.

    Returns (tokens, parents, index of each column's last level). Level 0 is a chain across columns
    (column c's parent is column c-1's level 0, column 0's the pending token); level l of a column sits
    on its own level l-1. Columns may hold different numbers of levels (planned mode runs some columns
    more often than others); each is still one diagonal Jacobi trajectory.
    """
    tokens, parents, where = [], [], {}
    for level in range(max((len(c) for c in columns[:width]), default=0)):
        for col in range(width):
            if level >= len(columns[col]):
                continue
            where[col, level] = 1 + len(tokens)
            tokens.append(columns[col][level])
            if level == 0:
                parents.append(where[col - 1, 0] if col else 0)
            else:
                parents.append(where[col, level - 1])
    return tokens, parents, [where[col, len(columns[col]) - 1] for col in range(width)]


class Lookahead(Decoder):
    name = "lookahead"
    description = "Jacobi n-gram window + n-gram pool verification in one forward pass (Fu et al. 2024)"
    capabilities = Capabilities(exact=True, supports_sampling=True)
    Params = LookaheadParams
    window_steps = window_columns = 0  # steps that carried the window, and the columns they ran

    def start(self, state: DecodeState) -> None:
        p = self.sizes = self.params.sizes()
        self.pool = NgramPool(n=p.N, capacity=p.G)
        if p.pool_from_prompt:
            self.pool.add_sequence(state.tokens)
        self.context = ContextIndex(max_context=CONTEXT)
        if p.C:
            self.context.extend(state.tokens)
        # Level 0 starts as tokens drawn from the prompt (a private RNG: no global state is touched).
        rng = random.Random(len(state.tokens))
        prompt = state.tokens[: state.prompt_length]
        self.columns: list[list[int]] = [[rng.choice(prompt)] for _ in range(p.W)]  # each column's levels
        self.planner = StepPlanner(cost=state.forward_cost()) if self.params.planned else None
        self.window_yield = [0.0, 0.0]  # planned mode: [tokens credited to window n-grams, column-steps run]

    # -- propose --------------------------------------------------------------------------------

    def window_fits(self, state: DecodeState, width: int) -> bool:
        """The window's farthest guess must have a position the model can embed."""
        limit = state.backend.max_positions
        levels = max(len(c) for c in self.columns[:width])
        farthest = state.kv.length + width + levels - 1
        return state.remaining > 1 and (limit is None or farthest < limit)

    def candidates(self, state: DecodeState) -> list[Draft]:
        """This step's candidates for the verification branch (see `choose_candidates`)."""
        return candidate_drafts(self.sizes, self.context, self.pool, state.pending, state.remaining - 1)

    def fixed_width(self, state: DecodeState, drafts: list[Draft]) -> int:
        """Fixed mode: all W columns, if the window fits; an idle step (no candidate) may skip it."""
        p = self.sizes
        idle_too = p.idle_window == "on" or (p.idle_window == "auto" and p.W > 1)
        return p.W if self.window_fits(state, p.W) and (drafts or idle_too) else 0

    def window_worth(self) -> float:
        """Planned mode: tokens a window column-step is expected to commit later, from this decode so far."""
        credited, run = self.window_yield
        return (credited + WINDOW_PRIOR_YIELD * WINDOW_PRIOR_WEIGHT) / (run + WINDOW_PRIOR_WEIGHT)

    def planned_choice(self, state: DecodeState, drafts: list[Draft]) -> tuple[list[Draft], int]:
        """Planned mode: the draft prefixes and window width with the most expected tokens per second."""
        worth = self.window_worth()
        extras = [Extra(tokens=sum(len(c) for c in self.columns[:w]), value=w * worth, label=w)
                  for w in PLANNED_WIDTHS if w <= len(self.columns) and self.window_fits(state, w)]
        chosen = self.planner.plan(drafts, state.kv.length, extras)
        return list(chosen.drafts), chosen.extra.label if chosen.extra else 0

    def propose(self, state: DecodeState) -> Proposal:
        """[pending, window, trie]: one tree; the logits read are the pending token's, the window's last levels, the trie's."""
        plan = self.plan(state)
        return Proposal(tokens=plan.tokens, layout=tree_layout(plan.parents), outputs=plan.output_rows(), plan=plan)

    def plan(self, state: DecodeState) -> StepPlan:
        drafts = self.candidates(state)
        if self.planner is None:
            width = self.fixed_width(state, drafts)
        else:
            drafts, width = self.planned_choice(state, drafts)
        trie = Trie.build(d.tokens for d in drafts)
        window, parents, last_level = window_layout(self.columns, width)
        tokens = [state.pending, *window]
        parents = [-1, *parents]
        base = len(tokens)
        tokens += trie.tokens
        parents += [base + p if p >= 0 else 0 for p in trie.parents]
        return StepPlan(tokens=tokens, parents=parents, last_level=last_level, trie=trie, drafts=drafts)

    # -- verify ---------------------------------------------------------------------------------

    def verify_greedy(self, state: DecodeState, plan: StepPlan, logits: dict[int, torch.Tensor],
                      argmax: dict[int, int]) -> tuple[list[int], list[int]]:
        """Longest trie path matching the model's greedy choice, plus the bonus token.

        The choice after a node is the argmax of its processed scores, with the accepted path as its
        prefix (the raw argmax when no logits processor is on). Returns (committed tokens, plan indices
        of the accepted trie nodes).
        """
        node, index, accepted = -1, 0, []
        while True:
            path = [plan.tokens[i] for i in accepted]
            token = int(state.choose(logits[index], [path])) if state.processors else argmax[index]
            child = plan.trie.child(node, token)
            if child is None:
                return path + [token], accepted
            node, index = child, plan.trie_start + child
            accepted.append(index)

    def verify_sampling(self, state: DecodeState, plan: StepPlan, logits: dict[int, torch.Tensor]) -> tuple[list[int], list[int]]:
        """The paper's sampling verification for one-hot drafts: keeps the model's distribution exactly.

        At each node, try its children in order: accept child token t with probability p(t); on
        rejection set p(t) = 0 and renormalise. If no child is accepted, sample from what is left.
        """
        node, index, accepted = -1, 0, []
        while True:
            probs = state.probabilities(logits[index], [[plan.tokens[i] for i in accepted]])  # (V,)
            moved = False
            for token, child in plan.trie.child_tokens(node):
                u = torch.rand((), generator=state.sampler.generator, dtype=torch.float64).item()
                if u < probs[token].item():
                    node, index, moved = child, plan.trie_start + child, True
                    accepted.append(index)
                    break
                probs[token] = 0.0
                total = probs.sum()
                if total <= 0:
                    break
                probs = probs / total  # (V,)
            if not moved:
                bonus = int(torch.multinomial(probs, 1, generator=state.sampler.generator))
                return [plan.tokens[i] for i in accepted] + [bonus], accepted

    # -- commit ---------------------------------------------------------------------------------

    def advance_window(self, plan: StepPlan, argmax: dict[int, int]) -> None:
        """One Jacobi iteration per column run: its last level's output becomes a level; a full column yields an n-gram."""
        for col, row in enumerate(plan.last_level):
            levels, output = self.columns[col], argmax[row]
            if len(levels) == self.sizes.N - 1:
                self.pool.add(levels[0], [*levels[1:], output], origin="window")
                self.columns[col] = [*levels[1:], output]
            else:
                levels.append(output)
        if plan.last_level:
            self.window_steps += 1
            self.window_columns += len(plan.last_level)

    def learn(self, plan: StepPlan, committed: list[int]) -> None:
        """Planned mode: what each draft source earned, and what the window's n-grams added beyond the rest."""
        self.planner.record(plan.drafts, committed)
        best = {"window": 0, "other": 0}
        for draft in plan.drafts:
            kind = "window" if draft.source == "pool:window" else "other"
            best[kind] = max(best[kind], matched_length(draft.tokens, committed))
        self.window_yield[0] += max(0, best["window"] - best["other"])
        self.window_yield[1] += len(plan.last_level)

    def verify(self, state: DecodeState, proposal: Proposal, kept: torch.Tensor) -> Verdict:
        plan, rows = proposal.plan, proposal.outputs
        logits = dict(zip(rows, kept))  # token index -> its logits (V,); kept (K, V)
        # token index -> the model's next token before any logits processor (what the window's guesses use)
        argmax = dict(zip(rows, kept.float().argmax(dim=-1).tolist()))
        if state.sampler is None:
            committed, accepted = self.verify_greedy(state, plan, logits, argmax)
        else:
            committed, accepted = self.verify_sampling(state, plan, logits)
        self.advance_window(plan, argmax)
        if self.planner is not None:
            self.learn(plan, committed)
        if self.sizes.pool_from_prompt:
            self.pool.add_sequence(state.tokens + committed, first_end=len(state.tokens))
        if self.sizes.C:
            self.context.extend(committed)
        return Verdict(tokens=committed, keep=[0] + accepted)  # the pending token and the accepted drafts

    def report(self) -> dict[str, Any]:
        """How often the window ran and how wide (planned mode's choices show here)."""
        return {"window_steps": self.window_steps, "window_columns": self.window_columns}
