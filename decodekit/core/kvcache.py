"""The KV-cache manager: one owner for the cache of one sequence.

Strategies never index cache tensors. They ask for three things: the current length, a roll back to
a shorter length, and, after a forward that appended T speculative positions, to keep only a chosen
(possibly non-contiguous) subset of them, in order. That last one is how lookahead and tree
verification keep exactly the accepted tokens' keys and values.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs

from decodekit.core.backend import HFBackend


@attrs.define(eq=False)
class KVCacheManager:
    backend: HFBackend
    cache: Any = None

    def __attrs_post_init__(self) -> None:
        if self.cache is None:
            self.cache = self.backend.new_cache()

    @property
    def length(self) -> int:
        """Positions held (the committed tokens whose keys and values are cached)."""
        return self.backend.cache_length(self.cache)

    def rollback(self, length: int) -> None:
        """Forget every position from `length` on."""
        if not 0 <= length <= self.length:
            raise ValueError(f"rollback length must be in [0, {self.length}], got {length}")
        self.backend.crop_cache(self.cache, length)

    def keep_appended(self, start: int, keep: Sequence[int]) -> None:
        """After a forward appended positions start, start+1, ...: keep those at offsets `keep`.

        `keep` is strictly increasing; afterwards the cache holds start + len(keep) positions, the
        kept ones in their original order right after `start`.
        """
        appended = self.length - start
        keep = list(keep)
        if any(b <= a for a, b in zip(keep, keep[1:])):
            raise ValueError(f"keep must be strictly increasing, got {keep}")
        if keep and not (0 <= keep[0] and keep[-1] < appended):
            raise ValueError(f"keep offsets must lie in [0, {appended}), got {keep}")
        if keep == list(range(len(keep))):  # a prefix: nothing moves
            self.backend.crop_cache(self.cache, start + len(keep))
            return
        self.backend.compact_cache(self.cache, start, keep)


@attrs.define(eq=False)
class RowsCache:
    """The cache of a batch of rows decoded together: one dense model cache, a valid length per row.

    Row b's committed positions are its first `lengths[b]` columns; every column after them is
    garbage to that row (the mask builder hides it). A packed forward appends the same number of
    columns to every row; `keep` then moves each row's kept positions right after its committed ones
    and crops the columns no row needs, so the cache grows with committed tokens only, never with
    rejected drafts or padding. Rows that have finished leave the cache (`select`).
    """

    backend: HFBackend
    lengths: list[int]
    cache: Any = None

    def __attrs_post_init__(self) -> None:
        if self.cache is None:
            self.cache = self.backend.new_cache()

    @property
    def width(self) -> int:
        """Columns the dense cache holds (the longest row's committed positions, after a `keep`)."""
        return self.backend.cache_length(self.cache)

    def row(self, b: int) -> "RowLength":
        return RowLength(self, b)

    def keep(self, start: int, keeps: Sequence[Sequence[int]]) -> None:
        """After a forward appended columns start, start+1, ... to every row: row b keeps those at offsets keeps[b].

        Each keeps[b] is strictly increasing; afterwards row b holds lengths[b] + len(keeps[b]) positions.
        """
        rows, sources, targets = [], [], []
        for b, keep in enumerate(keeps):
            keep = list(keep)
            if any(y <= x for x, y in zip(keep, keep[1:])) or (keep and (keep[0] < 0 or start + keep[-1] >= self.width)):
                raise ValueError(f"row {b}: keep offsets must be increasing and in [0, {self.width - start}), got {keep}")
            for i, offset in enumerate(keep):
                if start + offset != self.lengths[b] + i:  # already in place when nothing before it was dropped
                    rows.append(b)
                    sources.append(start + offset)
                    targets.append(self.lengths[b] + i)
            self.lengths[b] += len(keep)
        if rows:
            self.backend.move_columns(self.cache, rows, sources, targets)
        self.backend.crop_cache(self.cache, max(self.lengths))

    def rollback(self, b: int, length: int) -> None:
        """Row b forgets every position from `length` on."""
        if not 0 <= length <= self.lengths[b]:
            raise ValueError(f"rollback length for row {b} must be in [0, {self.lengths[b]}], got {length}")
        self.lengths[b] = length
        self.backend.crop_cache(self.cache, max(self.lengths))

    def stack(self, parts: Sequence[tuple[Sequence[int], "RowsCache"]]) -> None:
        """Become the rows of several caches: part (indices, cache) supplies rows `indices` of this one, in
        order; every index 0 .. B-1 exactly once. Each row keeps its length (its later columns are garbage)."""
        order = sorted(b for indices, _ in parts for b in indices)
        if order != list(range(len(self.lengths))):
            raise ValueError(f"stack: the parts must supply rows 0..{len(self.lengths) - 1} once each, got {order}")
        self.cache = self.backend.stack_rows([(list(indices), part.cache) for indices, part in parts])
        for indices, part in parts:
            for b, length in zip(indices, part.lengths):
                self.lengths[b] = length

    def select(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (indices into the current rows), in that order."""
        self.backend.select_rows(self.cache, list(rows))
        self.lengths = [self.lengths[b] for b in rows]
        self.backend.crop_cache(self.cache, max(self.lengths, default=0))


@attrs.define(eq=False)
class RowLength:
    """What a strategy may know of its row's cache in a batch: how many positions it holds."""

    rows: RowsCache
    index: int

    @property
    def length(self) -> int:
        return self.rows.lengths[self.index]
