"""Jacobi decoding (Santilli et al., ACL 2023): refine a block of guessed tokens in parallel until it converges.

Greedy decoding is the fixed point of y_i = argmax p(. | prompt, y_<i) for every i of a block at once.
Jacobi decoding guesses the whole block, then iterates: one forward over [pending, guesses] gives,
at every position, the token the model emits after the guesses before it. Those outputs become the
next guesses. Output i is exact as soon as the guesses before it equal the model's own outputs, so
each pass commits the converged prefix: the first output always (one token per pass at worst, like
greedy), and one more for every leading guess the pass confirmed.

A block's window shrinks as its prefix converges. It is refilled to `block_size` guesses when the
block has converged or after `max_iterations` passes on it (max_iterations=1: a sliding window that
always looks block_size - 1 tokens ahead).

Sampling (do_sample=True) is well defined here through fixed noise: each position gets one uniform
draw when it enters the window, and its token is the inverse CDF of the model's (filtered)
distribution at that draw. The map from prefix to tokens is then deterministic, so the iteration
converges exactly as in the greedy case, to the ancestral sample those uniforms determine: an
exact sample of the model's distribution.
"""

from __future__ import annotations

import attrs
import torch

from decodekit.core.decoder import Decoder, DecodeState, Proposal, Verdict
from decodekit.core.params import param
from decodekit.core.sampling import inverse_cdf
from decodekit.core.types import Capabilities


@attrs.frozen(kw_only=True)
class JacobiParams:
    block_size: int = param(8, ge=1, le=256, help="tokens guessed and refined together in one forward pass")
    max_iterations: int = param(8, ge=1, le=1024,
                                help="passes on one block before its window is refilled to block_size guesses")


class Jacobi(Decoder):
    name = "jacobi"
    description = "Jacobi decoding: refine a block of guesses in parallel, commit the converged prefix"
    capabilities = Capabilities(exact=True, supports_sampling=True)
    Params = JacobiParams

    def start(self, state: DecodeState) -> None:
        self.guesses: list[int] = []  # guesses for the tokens after the pending one
        self.noise: list[float] = []  # sampling only: one uniform per position of the window, pending's output first
        self.iterations = 0  # passes spent on the current block

    def propose(self, state: DecodeState) -> Proposal:
        return Proposal(tokens=self.window(state))

    def verify(self, state: DecodeState, proposal: Proposal, logits: torch.Tensor) -> Verdict:
        outputs = self.emit(state, proposal.tokens, logits)  # logits (T, V)
        return Verdict(tokens=self.commit(proposal.tokens, outputs))

    # -- propose: pending token + the block's guesses ---------------------------------------------

    def window(self, state: DecodeState) -> list[int]:
        """[pending] + guesses, refilled to block_size when a block starts; never past max_new_tokens."""
        size = min(self.params.block_size, state.remaining)
        if self.iterations == 0 or not self.guesses:
            self.iterations = 0
            # a fresh guess for each new position: the pending token repeated (any guess is exact; this one is free)
            self.guesses += [state.pending] * (size - 1 - len(self.guesses))
        self.guesses = self.guesses[: size - 1]
        if state.sampler is not None:
            fresh = size - len(self.noise)
            if fresh > 0:  # positions enter the window in order, so each one's noise is drawn once, in order
                self.noise += torch.rand(fresh, generator=state.sampler.generator, dtype=torch.float64).tolist()
        self.iterations += 1
        return [state.pending] + self.guesses

    # -- the model's output at every position ------------------------------------------------------

    def emit(self, state: DecodeState, window: list[int], logits: torch.Tensor) -> list[int]:
        """The token after each input: argmax, or (sampling) the inverse CDF at the position's fixed noise.

        Input i's prefix is the committed tokens and the guesses before it (for the logits processors).
        """
        paths = state.chain(window[1:])
        if state.sampler is None:
            return state.choose(logits, paths).tolist()  # (T,)
        probs = state.probabilities(logits, paths)  # (T, V)
        uniforms = torch.tensor(self.noise[: logits.shape[0]], dtype=torch.float64)  # (T,)
        return inverse_cdf(probs, uniforms).tolist()  # (T,)

    # -- verify and commit: the converged prefix ---------------------------------------------------

    def commit(self, window: list[int], outputs: list[int]) -> list[int]:
        """Output i is exact when guesses 1..i equal outputs 0..i-1; keep those, refine the rest.

        Pending and the confirmed guesses stay cached (the chain's first `accepted` tokens).
        """
        accepted = 1
        while accepted < len(window) and window[accepted] == outputs[accepted - 1]:
            accepted += 1
        self.guesses = outputs[accepted:]  # the next Jacobi iterate for the unconverged positions
        self.noise = self.noise[accepted:]
        if not self.guesses or self.iterations >= self.params.max_iterations:
            self.iterations = 0  # the block is done: the next pass refills the window
        return outputs[:accepted]
