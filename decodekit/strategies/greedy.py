"""Greedy decoding: one token per forward, the argmax (or a sample when do_sample=True).

This is the reference every exact strategy is checked against, run through the same loop, cache
manager and backend as the others; its output equals model.generate(do_sample=False).
"""

from __future__ import annotations

from decodekit.core.decoder import Decoder, DecodeState
from decodekit.core.types import Capabilities


class Greedy(Decoder):
    name = "greedy"
    description = "one token per forward pass: the reference every exact strategy equals"
    capabilities = Capabilities(exact=True, supports_sampling=True)

    def step(self, state: DecodeState) -> list[int]:
        logits = state.forward([state.pending], layout=None, logits_to_keep=1)  # (1, V)
        return [int(state.choose(logits[-1]))]
