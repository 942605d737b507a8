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
