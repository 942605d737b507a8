"""The one decode loop: prefill, then strategy steps until a stop condition; statistics live here."""

from __future__ import annotations

import time
from typing import Callable, Sequence

from decodekit.core.decoder import Decoder, DecodeState
from decodekit.core.types import GenerationStats

StepCallback = Callable[[list[int]], None]


def prefill(state: DecodeState) -> int:
    """Cache the whole prompt in one forward and choose the first new token from its last logits."""
    logits = state.forward(state.tokens, layout=None, logits_to_keep=1)  # (1, V)
    return int(state.choose(logits[-1]))


def cut_at_stop(state: DecodeState, proposed: Sequence[int]) -> tuple[list[int], bool]:
    """Keep a step's tokens up to the first that ends the sequence (inclusive) and within max_new_tokens.

    A token ends the sequence when it is an eos id or when, appended, it makes a stop check true (a stop
    string completed, ...): checked after every token, as greedy decoding checks after every step.
    """
    tokens = list(proposed)[: state.remaining]
    for i, token in enumerate(tokens):
        if token in state.eos_ids:
            return tokens[: i + 1], True
        if state.stop_checks:
            prefix = state.tokens + tokens[: i + 1]
            if any(check(prefix) for check in state.stop_checks):
                return tokens[: i + 1], True
    return tokens, state.remaining - len(tokens) <= 0


def commit(state: DecodeState, tokens: list[int], histogram: dict[int, int], on_step: StepCallback | None) -> None:
    state.tokens.extend(tokens)
    histogram[len(tokens)] = histogram.get(len(tokens), 0) + 1
    if on_step is not None:
        on_step(tokens)


def run(decoder: Decoder, state: DecodeState, on_step: StepCallback | None = None) -> GenerationStats:
    """Decode one sequence with `decoder`; `state.tokens` ends as prompt + generated tokens."""
    began = time.perf_counter()
    histogram: dict[int, int] = {}
    cut = 0
    first, done = cut_at_stop(state, [prefill(state)])
    commit(state, first, histogram, on_step)
    if not done:
        decoder.start(state)
    while not done:
        before = len(state.tokens)
        proposed = list(decoder.step(state))
        if not proposed:
            raise RuntimeError(f"strategy {decoder.name!r} committed no token in a step")
        if state.kv.length != before - 1 + len(proposed):
            raise RuntimeError(
                f"strategy {decoder.name!r} broke the cache invariant: {len(proposed)} tokens committed, "
                f"cache holds {state.kv.length} positions, expected {before - 1 + len(proposed)}")
        tokens, done = cut_at_stop(state, proposed)
        if len(tokens) < len(proposed):
            state.kv.rollback(before - 1 + len(tokens))
            cut += len(proposed) - len(tokens)
        commit(state, tokens, histogram, on_step)
    return GenerationStats(steps=state.forwards, new_tokens=len(state.tokens) - state.prompt_length,
                           accepted_histogram=histogram, seconds=time.perf_counter() - began,
                           tokens_computed=state.tokens_computed, cut_tokens=cut, details=decoder.report())
