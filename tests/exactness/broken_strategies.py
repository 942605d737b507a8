"""Deliberately broken strategies: the exactness suite must catch both, and say where.

Both draft the same way (the tokens that followed the previous occurrence of the pending token, a
1-gram prompt lookup) and forward [pending, *draft] in one pass, like a real drafting strategy.

- OneTooMany accepts one drafted token too many: the first rejected draft is committed as if it had
  been verified. The output is wrong at exactly that token.
- WrongKV commits the right tokens but the wrong keys and values: after a rejection it keeps the
  rejected draft's cache entry in place of the last accepted token's. The tokens of that step are
  right; the corrupted context shows up at a later token.
"""

from __future__ import annotations

import torch

import decodekit


def lookup_draft(tokens: list[int], size: int) -> list[int]:
    """The `size` tokens after the previous occurrence of the last token, or [last] * size."""
    last = tokens[-1]
    for i in range(len(tokens) - 2, -1, -1):
        if tokens[i] == last and i + 1 < len(tokens) - 1:
            return tokens[i + 1: i + 1 + size]
    return [last] * size


class _Drafting(decodekit.Decoder):
    capabilities = decodekit.Capabilities(exact=True)  # claimed; the suite must prove it false

    def forward_and_verify(self, state: decodekit.DecodeState) -> tuple[int, list[int], torch.Tensor]:
        draft = lookup_draft(state.tokens, min(3, state.remaining - 1)) if state.remaining > 1 else []
        start = state.kv.length
        logits = state.forward([state.pending, *draft])  # (T, V)
        choices = state.choose(logits)  # (T,)
        accepted = 0
        while accepted < len(draft) and draft[accepted] == int(choices[accepted]):
            accepted += 1
        return start, draft, choices, accepted


class OneTooMany(_Drafting):
    name = "broken-one-too-many"
    description = "BROKEN: accepts the first rejected drafted token too"

    def step(self, state):
        start, draft, choices, accepted = self.forward_and_verify(state)
        if accepted < len(draft):
            accepted += 1  # the bug: one token past the verified prefix
        state.kv.rollback(start + accepted + 1)
        return [*draft[:accepted], int(choices[accepted])]


class WrongKV(_Drafting):
    name = "broken-wrong-kv"
    description = "BROKEN: keeps a rejected draft's keys and values in the cache"

    def step(self, state):
        start, draft, choices, accepted = self.forward_and_verify(state)
        if accepted < len(draft):
            # the bug: offsets 0..accepted should be kept; the last of them is swapped for the rejected draft's
            state.kv.keep_appended(start, [*range(accepted), accepted + 1])
        else:
            state.kv.rollback(start + accepted + 1)
        return [*draft[:accepted], int(choices[accepted])]


class RawArgmax(_Drafting):
    """BROKEN under logits processors: verifies with the raw argmax instead of state.choose(logits, paths).

    Without generation settings it is right; with a repetition penalty, no_repeat_ngram_size, ... its
    choices ignore the processors model.generate applies.
    """

    name = "broken-raw-argmax"
    description = "BROKEN: verifies with the raw argmax, ignoring logits processors"

    def step(self, state):
        draft = lookup_draft(state.tokens, min(3, state.remaining - 1)) if state.remaining > 1 else []
        start = state.kv.length
        choices = state.forward([state.pending, *draft]).argmax(dim=-1)  # (T,): the bug, no processors
        accepted = 0
        while accepted < len(draft) and draft[accepted] == int(choices[accepted]):
            accepted += 1
        state.kv.rollback(start + accepted + 1)
        return [*draft[:accepted], int(choices[accepted])]
