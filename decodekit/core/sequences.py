"""Comparing token sequences (no test-only dependencies: the CLI uses this as well as decodekit.testing)."""

from __future__ import annotations

from typing import Sequence


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where a and b differ (a length difference counts), or None if they are equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
