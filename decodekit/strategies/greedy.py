"""Greedy decoding: one token per forward, the argmax (or a sample when do_sample=True).

This is the reference every exact strategy is checked against, run through the same loop, cache
manager and backend as the others; its output equals model.generate(do_sample=False).
"""

from __future__ import annotations

import torch

from decodekit.core.decoder import Decoder, DecodeState, Proposal, Verdict
from decodekit.core.types import Capabilities


class Greedy(Decoder):
    name = "greedy"
    description = "one token per forward pass: the reference every exact strategy equals"
    capabilities = Capabilities(exact=True, supports_sampling=True)

    def propose(self, state: DecodeState) -> Proposal:
        return Proposal(tokens=[state.pending])

    def verify(self, state: DecodeState, proposal: Proposal, logits: torch.Tensor) -> Verdict:
        return Verdict(tokens=[int(state.choose(logits[-1]))])  # logits (1, V)
