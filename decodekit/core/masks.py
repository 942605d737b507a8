"""The mask builder: "which new token may see which" -> a 4-D additive float mask and position ids.

Every multi-token forward in decodekit is described the same way: the T new tokens of a step see the
whole committed context (the cache) and, among themselves, whatever a (T, T) boolean matrix allows.
The mask handed to the model is additive: 0 where attention is allowed, the dtype's minimum
elsewhere. (A boolean 4-D mask is silently misread by eager attention, which adds it to the scores.)

Most structures decodekit needs are trees rooted at the pending token: a chain (greedy, Jacobi,
speculative), a trie of candidate n-grams, lookahead's window of diagonal trajectories. For a tree,
token i sees itself and its ancestors, and its position is the pending position plus its depth.
"""

from __future__ import annotations

from typing import Sequence

import attrs
import torch


@attrs.define(eq=False)
class StepLayout:
    """Who sees whom among a step's new tokens, and where each one sits.

    visible[i, j]: new token i may attend to new token j (every token sees the whole cache).
    offsets[i]: position of token i relative to the first new token's position.
    """

    visible: torch.Tensor  # (T, T) bool
    offsets: torch.Tensor  # (T,) int64

    def __attrs_post_init__(self) -> None:
        t = self.offsets.shape[0]
        if self.visible.shape != (t, t) or self.visible.dtype != torch.bool:
            raise ValueError(f"visible must be a ({t}, {t}) bool tensor, got {tuple(self.visible.shape)} {self.visible.dtype}")

    @property
    def size(self) -> int:
        return int(self.offsets.shape[0])


def causal_layout(size: int) -> StepLayout:
    """A plain chain: token i sees tokens 0..i and sits at offset i."""
    visible = torch.ones(size, size, dtype=torch.bool).tril_()  # (T, T)
    return StepLayout(visible=visible, offsets=torch.arange(size))


def tree_layout(parents: Sequence[int]) -> StepLayout:
    """A tree given by parent indices: parents[0] == -1 (the root), parents[i] < i otherwise.

    Token i sees itself and all its ancestors; its offset is its depth (the root has depth 0).
    """
    size = len(parents)
    if size == 0 or parents[0] != -1:
        raise ValueError("a tree layout needs the root first: parents[0] == -1")
    visible = torch.eye(size, dtype=torch.bool)  # (T, T): every token sees itself
    depth = [0] * size
    for i in range(1, size):
        p = parents[i]
        if not 0 <= p < i:
            raise ValueError(f"parents[{i}] must be in [0, {i}), got {p}")
        visible[i] |= visible[p]  # the ancestors of i are p and p's ancestors
        depth[i] = depth[p] + 1
    return StepLayout(visible=visible, offsets=torch.tensor(depth, dtype=torch.long))


def additive_mask(layout: StepLayout, past_length: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (1, 1, T, past_length + T) additive mask for a step described by `layout`."""
    t = layout.size
    mask = torch.zeros(t, past_length + t, dtype=dtype, device=device)  # (T, S)
    blocked = ~layout.visible.to(device)  # (T, T)
    mask[:, past_length:].masked_fill_(blocked, torch.finfo(dtype).min)
    return mask[None, None]  # (1, 1, T, S)


def position_ids(layout: StepLayout, start: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Absolute position of each new token: the first new token sits at `start`."""
    return (layout.offsets + start).to(device)  # (T,)


# -- a batch of rows in one forward ----------------------------------------------------------------
#
# Rows of a batch share one dense cache of S columns. Row b's committed tokens sit in its first
# `lengths[b]` columns; the columns after them hold nothing the row may see (padding, or rejected
# drafts of another row's longer step). A packed step appends T = the largest row's step columns:
# row b's own tokens first, then padding. A padding query sees only itself (never a fully masked row,
# which would make NaNs that a masked-out column could still carry into a softmax).


def packed_mask(layouts: Sequence[StepLayout], lengths: Sequence[int], cached: int, dtype: torch.dtype,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The (B, 1, T, cached + T) additive mask of one packed step, T the largest layout's size.

    Row b's token i sees cache columns [0, lengths[b]) and, among the new columns, what layouts[b]
    lets it see. For one row whose cache is all its own this is `additive_mask(layout, cached)`.
    """
    rows, size = len(layouts), max(layout.size for layout in layouts)
    allowed = torch.zeros(rows, size, cached + size, dtype=torch.bool)  # (B, T, S + T)
    for b, layout in enumerate(layouts):
        t = layout.size
        allowed[b, :t, : lengths[b]] = True  # the row's own committed tokens
        allowed[b, :t, cached: cached + t] = layout.visible  # (t, t) its step's structure
        pads = torch.arange(t, size)  # (T - t,)
        allowed[b, pads, cached + pads] = True  # a padding query sees itself only
    mask = torch.zeros(rows, size, cached + size, dtype=dtype)  # (B, T, S + T)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None].to(device)  # (B, 1, T, S + T)


def packed_positions(layouts: Sequence[StepLayout], lengths: Sequence[int]) -> torch.Tensor:
    """(B, T) absolute positions: row b's first new token sits at lengths[b]; padding repeats it."""
    size = max(layout.size for layout in layouts)
    out = torch.zeros(len(layouts), size, dtype=torch.long)  # (B, T)
    for b, layout in enumerate(layouts):
        out[b] = lengths[b]
        out[b, : layout.size] += layout.offsets
    return out
