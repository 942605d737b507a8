"""Prompt lookup decoding (Saxena, 2023): draft tokens by copying from the text itself.

Outputs often repeat their input (summaries quote the article, code edits copy the code, answers
reuse the question's words). So: take the last few tokens, find where that n-gram occurred before in
prompt + output, and propose the tokens that followed it there as a draft. One forward pass over
[pending, *draft] checks every drafted token at once; the longest prefix that greedy decoding would
have produced is kept, plus the model's own next token (the "bonus"). Exact: every committed token is
the argmax of the logits that greedy decoding would compute, given the same committed prefix.

Only decodekit's public interface is used: decodekit.Decoder, decodekit.Proposal, decodekit.Verdict,
decodekit.Capabilities, decodekit.param, decodekit.StepPlanner and decodekit.Draft, and the DecodeState
handed to propose() and verify() (forward_cost, choose, chain, kv.length, tokens, pending, remaining).
decodekit's loop runs the forward: every row of a batch through one forward per step.
"""

from __future__ import annotations

from typing import Sequence

import attrs
import torch

import decodekit


def find_draft(tokens: Sequence[int], *, max_ngram: int, min_ngram: int, num_pred_tokens: int) -> list[int]:
    """The tokens that followed the longest recent earlier occurrence of the sequence's last n-gram.

    Tries n = max_ngram, max_ngram - 1, ..., min_ngram and stops at the first n whose last-n-gram
    occurred earlier. Among its earlier occurrences it takes the most recent one that is followed by
    num_pred_tokens tokens; if none is followed by that many, the one followed by the most (the
    oldest). Returns up to num_pred_tokens tokens, or [] when no n-gram matches.
    """
    return find_match(tokens, max_ngram=max_ngram, min_ngram=min_ngram, num_pred_tokens=num_pred_tokens)[0]


def find_match(tokens: Sequence[int], *, max_ngram: int, min_ngram: int,
               num_pred_tokens: int) -> tuple[list[int], int]:
    """`find_draft`, with the length n of the n-gram that matched (0 when none did)."""
    seq = torch.as_tensor(list(tokens), dtype=torch.long)  # (L,)
    length = int(seq.shape[0])
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = seq[length - n:]  # (n,)
        # window i is seq[i : i + n] for i + n <= L - 1: every earlier n-gram with a token after it
        windows = seq[: length - 1].unfold(0, n, 1)  # (L - n, n)
        starts = (windows == suffix).all(dim=1).nonzero().flatten()  # (M,) oldest first
        if starts.numel() == 0:
            continue
        follow = torch.clamp(length - (starts + n), max=num_pred_tokens)  # (M,) tokens after each match
        full = (follow == num_pred_tokens).nonzero().flatten()
        pick = int(starts[full[-1]]) if full.numel() else int(starts[0])  # most recent full, else oldest
        return seq[pick + n: pick + n + num_pred_tokens].tolist(), n
    return [], 0


class PromptLookup(decodekit.Decoder):
    """prompt-lookup: draft by n-gram lookup in prompt + output, verify in one pass; exact."""

    name = "prompt-lookup"
    description = "draft the continuation of the longest recent n-gram match in prompt + output, verify in one pass"
    capabilities = decodekit.Capabilities(exact=True)

    @attrs.frozen(kw_only=True)
    class Params:
        max_ngram: int = decodekit.param(3, ge=1, le=64, help="longest n-gram of the last tokens to look up")
        min_ngram: int = decodekit.param(2, ge=1, le=64, help="shortest n-gram tried before drafting nothing")
        num_pred_tokens: int = decodekit.param(10, ge=1, le=256, help="tokens drafted after a match (at most)")
        plan: bool = decodekit.param(True, help="let decodekit's step planner cut each draft to what pays on this "
                                                "machine (false: always put the whole draft through)")

        def __attrs_post_init__(self) -> None:
            if self.min_ngram > self.max_ngram:
                raise ValueError(f"min_ngram must be <= max_ngram ({self.max_ngram}), got {self.min_ngram}; "
                                 f"lower min_ngram as well")

    def start(self, state: decodekit.DecodeState) -> None:
        # The planner weighs each draft's expected accepted tokens (learnt per match length n as the
        # decode goes) against what a longer forward costs on this machine.
        self.planner = decodekit.StepPlanner(cost=state.forward_cost()) if self.params.plan else None

    def drafts(self, state: decodekit.DecodeState) -> list[decodekit.Draft]:
        """Draft from the committed tokens; never more than can still be committed after the bonus token.

        With planning, the draft is cut to the prefix that maximises expected tokens per second.
        """
        budget = min(self.params.num_pred_tokens, state.remaining - 1)
        if budget <= 0:
            return []
        tokens, n = find_match(state.tokens, max_ngram=self.params.max_ngram, min_ngram=self.params.min_ngram,
                               num_pred_tokens=budget)
        drafts = [decodekit.Draft(tokens=tokens, source=f"lookup:{n}")] if tokens else []
        if self.planner is not None:
            drafts = list(self.planner.plan(drafts, state.kv.length).drafts)
        return drafts

    def propose(self, state: decodekit.DecodeState) -> decodekit.Proposal:
        """[pending, *draft], a chain: what this row puts through the model this step."""
        drafts = self.drafts(state)
        draft = list(drafts[0].tokens) if drafts else []
        return decodekit.Proposal(tokens=[state.pending, *draft], plan=drafts)

    def verify(self, state: decodekit.DecodeState, proposal: decodekit.Proposal,
               logits: torch.Tensor) -> decodekit.Verdict:
        """Greedy verification: the drafted tokens the model agrees with, then its own next token.

        Row i of logits (T, V) follows [pending, draft[0..i-1]], so choice i is what greedy decoding
        would emit there; draft[i] is accepted while it equals choice i. The pending token's and the
        accepted drafts' keys and values stay cached (the chain's first accepted + 1 tokens).
        """
        draft = proposal.tokens[1:]
        choices = state.choose(logits, state.chain(draft))  # (T,) T = 1 + len(draft); row i follows draft[:i]
        agree = torch.as_tensor(draft, dtype=torch.long, device=choices.device) == choices[: len(draft)]  # (T - 1,)
        accepted = int(agree.long().cumprod(dim=0).sum())  # length of the all-true prefix
        committed = [*draft[:accepted], int(choices[accepted])]
        if self.planner is not None:
            self.planner.record(proposal.plan, committed)
        return decodekit.Verdict(tokens=committed)
