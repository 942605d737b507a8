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
"""

from __future__ import annotations

import random

import attrs
import torch

from decodekit.core.decoder import Decoder, DecodeState
from decodekit.core.masks import tree_layout
from decodekit.core.params import param
from decodekit.core.types import Capabilities
from decodekit.strategies.ngram_pool import ContextIndex, NgramPool, Trie

CONTEXT = 4  # the longest suffix the context index matches


@attrs.frozen(kw_only=True)
class LookaheadParams:
    # Defaults tuned for 2-core CPUs (see docs/lookahead.md); the paper's A100 setting is W=15, N=5, G=15
    # (and C=0 for its pool alone).
    W: int = param(1, ge=1, le=64, help="window width: Jacobi columns advanced per step")
    N: int = param(5, ge=2, le=16, help="n-gram size: N-1 window levels; a pool candidate commits at most N tokens")
    G: int = param(4, ge=0, le=64, help="candidates verified per step, and kept per pool key (0: no verification)")
    pool_from_prompt: bool = param(True, help="also seed the pool with the prompt's and the output's n-grams")
    C: int = param(2, ge=0, le=16, help="of the G candidates, how many may be context candidates: what followed "
                                        "the longest earlier matches of the text's end")
    L: int = param(8, ge=1, le=32, help="context candidate length: at most L + 1 tokens committed per step from one")
    idle_window: str = param("auto", choices=("auto", "on", "off"),
                             help="on a step with no candidate to verify, run the window anyway (on, as the "
                                  "paper does) or make it a one-token forward (off); auto: on when W > 1")


def choose_candidates(params: LookaheadParams, context: ContextIndex, pool: NgramPool, pending: int,
                      room: int) -> list[tuple[int, ...]]:
    """At most G: context candidates first (a long match predicts well), then the pool's for `pending`.

    `room`: how many tokens may still come after the bonus token; every candidate is cut to it.
    State-free, so offline tools (examples/candidate_ceiling.py) replay exactly what a step verifies.
    """
    found = context.candidates(min(params.C, params.G), min(params.L, room)) if params.C else []
    return (found + pool.candidates(pending, min(params.N - 1, room)))[: params.G]


@attrs.define(eq=False)
class StepPlan:
    """What goes through one forward: [pending, window (level-major), trie nodes]."""

    tokens: list[int]
    parents: list[int]
    width: int  # W
    levels: int  # window levels included this step
    trie: Trie

    @property
    def trie_start(self) -> int:
        return 1 + self.levels * self.width

    def output_rows(self) -> list[int]:
        """Tokens whose logits the step reads: the pending token, the window's last level, the trie."""
        last_level = range(1 + (self.levels - 1) * self.width, 1 + self.levels * self.width) if self.levels else ()
        return [0, *last_level, *range(self.trie_start, len(self.tokens))]


class Lookahead(Decoder):
    name = "lookahead"
    description = "Jacobi n-gram window + n-gram pool verification in one forward pass (Fu et al. 2024)"
    capabilities = Capabilities(exact=True, supports_sampling=True)
    Params = LookaheadParams

    def start(self, state: DecodeState) -> None:
        p = self.params
        self.pool = NgramPool(n=p.N, capacity=p.G)
        if p.pool_from_prompt:
            self.pool.add_sequence(state.tokens)
        self.context = ContextIndex(max_context=CONTEXT)
        if p.C:
            self.context.extend(state.tokens)
        # Level 0 starts as tokens drawn from the prompt (a private RNG: no global state is touched).
        rng = random.Random(len(state.tokens))
        prompt = state.tokens[: state.prompt_length]
        self.levels: list[list[int]] = [[rng.choice(prompt) for _ in range(p.W)]]

    # -- propose --------------------------------------------------------------------------------

    def window_fits(self, state: DecodeState) -> bool:
        """The window's farthest guess must have a position the model can embed."""
        limit = state.backend.max_positions
        farthest = state.kv.length + self.params.W + len(self.levels) - 1
        return state.remaining > 1 and (limit is None or farthest < limit)

    def candidates(self, state: DecodeState) -> list[tuple[int, ...]]:
        """This step's candidates for the verification branch (see `choose_candidates`)."""
        return choose_candidates(self.params, self.context, self.pool, state.pending, state.remaining - 1)

    def window_runs(self, state: DecodeState, trie: Trie) -> bool:
        """Whether this step carries the window: it must fit, and an idle step (empty trie) may skip it."""
        p = self.params
        idle_too = p.idle_window == "on" or (p.idle_window == "auto" and p.W > 1)
        return self.window_fits(state) and (len(trie) > 0 or idle_too)

    def propose(self, state: DecodeState) -> StepPlan:
        w = self.params.W
        trie = Trie.build(self.candidates(state))
        levels = self.levels if self.window_runs(state, trie) else []
        tokens, parents = [state.pending], [-1]
        for level, row in enumerate(levels):
            for col, token in enumerate(row):
                tokens.append(token)
                if level == 0:  # the level-0 chain
                    parents.append(col)  # column 0's parent is the pending token (index 0)
                else:  # one level up in the same column
                    parents.append(1 + (level - 1) * w + col)
        base = len(tokens)
        tokens += trie.tokens
        parents += [base + p if p >= 0 else 0 for p in trie.parents]
        return StepPlan(tokens=tokens, parents=parents, width=w, levels=len(levels), trie=trie)

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
        """One Jacobi iteration per column: the last level's outputs become a level; full windows yield n-grams."""
        if plan.levels == 0:
            return
        w, last = self.params.W, plan.levels - 1
        outputs = [argmax[1 + last * w + col] for col in range(w)]
        if plan.levels == self.params.N - 1:
            for col in range(w):
                self.pool.add(self.levels[0][col], [row[col] for row in self.levels[1:]] + [outputs[col]])
            self.levels = self.levels[1:] + [outputs]
        else:
            self.levels.append(outputs)

    def step(self, state: DecodeState) -> list[int]:
        plan = self.propose(state)
        start = state.kv.length
        rows = plan.output_rows()
        kept = state.forward(plan.tokens, tree_layout(plan.parents), logits_to_keep=rows)  # (K, V)
        logits = dict(zip(rows, kept))  # token index -> its logits (V,)
        # token index -> the model's next token before any logits processor (what the window's guesses use)
        argmax = dict(zip(rows, kept.float().argmax(dim=-1).tolist()))
        if state.sampler is None:
            committed, accepted = self.verify_greedy(state, plan, logits, argmax)
        else:
            committed, accepted = self.verify_sampling(state, plan, logits)
        state.kv.keep_appended(start, [0] + accepted)  # the pending token and the accepted drafts
        self.advance_window(plan, argmax)
        if self.params.pool_from_prompt:
            self.pool.add_sequence(state.tokens + committed, first_end=len(state.tokens))
        if self.params.C:
            self.context.extend(committed)
        return committed
