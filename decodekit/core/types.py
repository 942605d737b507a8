"""Value types of the public contract: capabilities, statistics and the generation result."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

import attrs
import torch


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a strategy can do, declared as data rather than discovered by trying.

    exact: with do_sample=False its output equals greedy decoding token for token.
    supports_sampling: it accepts do_sample=True and preserves the model's distribution.
    needs_draft_model: generate() must be given draft_model=.
    """

    exact: bool
    supports_sampling: bool = False
    needs_draft_model: bool = False


def _frozen_histogram(value: Mapping[int, int]) -> Mapping[int, int]:
    return MappingProxyType(dict(sorted(value.items())))


@attrs.frozen(kw_only=True)
class GenerationStats:
    """What one generate() call cost and achieved.

    steps: forward passes of the target model, the prefill included.
    new_tokens: tokens generated (after cutting at eos / max_new_tokens).
    mean_accepted: new_tokens / steps, the tokens committed per forward pass (1.0 for greedy).
    accepted_histogram: {tokens committed in one step: number of such steps}.
    seconds: wall-clock time of the decode, prefill included.
    tokens_computed: tokens fed through the model after the prefill (what the steps cost).
    details: the strategy's own counts (Decoder.report), e.g. lookahead's window_steps and window_columns.
    cut_tokens: tokens a step had accepted past the point where the sequence stopped (an eos, a stop
    string or max_new_tokens inside a multi-token step), cut off by the loop; 0 when every stop fell on
    a step boundary.
    """

    steps: int
    new_tokens: int
    accepted_histogram: Mapping[int, int] = attrs.field(converter=_frozen_histogram)
    seconds: float
    tokens_computed: int = 0
    details: Mapping[str, float] = attrs.field(factory=dict, converter=lambda d: MappingProxyType(dict(d)))
    cut_tokens: int = 0
    forwards: int | None = None  # forward passes of the target for the whole call; None: `steps` (one row)
    rows: int = 1  # the sequences these statistics cover (the rows of a batch)

    @property
    def forward_passes(self) -> int:
        """Forward passes of the target model: a batch's packed forward counts once, however many rows it ran."""
        return self.steps if self.forwards is None else self.forwards

    @property
    def mean_accepted(self) -> float:
        return self.new_tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def merge(cls, parts: list["GenerationStats"], seconds: float | None = None,
              forwards: int | None = None) -> "GenerationStats":
        """Sum the statistics of several sequences (the rows of a batch); `seconds`: the call's wall time
        (rows decoded together overlap in time), else the sum of the rows' times; `forwards`: the packed
        forwards of rows decoded together, else the sum of the rows' steps.

        steps then counts every row's forwards (a packed forward once per row in it), so mean_accepted
        stays tokens committed per row per step."""
        histogram: dict[int, int] = {}
        for part in parts:
            for length, count in part.accepted_histogram.items():
                histogram[length] = histogram.get(length, 0) + count
        details: dict[str, float] = {}
        for part in parts:
            for key, value in part.details.items():
                details[key] = details.get(key, 0) + value
        return cls(
            steps=sum(p.steps for p in parts),
            new_tokens=sum(p.new_tokens for p in parts),
            accepted_histogram=histogram,
            seconds=sum(p.seconds for p in parts) if seconds is None else seconds,
            tokens_computed=sum(p.tokens_computed for p in parts),
            details=details,
            cut_tokens=sum(p.cut_tokens for p in parts),
            forwards=forwards,
            rows=sum(p.rows for p in parts),
        )

    @property
    def tokens_per_forward_step(self) -> float:
        """Tokens put through the model per step after the prefill (what a step costs)."""
        steps = self.steps - self.rows  # every row's prefill is one of its forwards, not a step
        return self.tokens_computed / steps if steps > 0 else 0.0

    def summary(self) -> str:
        text = f"{self.new_tokens} tokens in {self.seconds:.2f} s ({self.tokens_per_second:.1f} tokens/s), "
        if self.rows > 1:
            text += f"{self.rows} rows in {self.forward_passes} forward passes; the rows' "
        text += f"{self.steps} steps, {self.mean_accepted:.2f} tokens/step"
        if self.tokens_computed:
            text += f", {self.tokens_per_forward_step:.1f} tokens put through per step"
        if "window_steps" in self.details and self.steps > self.rows:
            runs = self.details["window_steps"]
            width = self.details["window_columns"] / runs if runs else 0.0
            text += f", window on {runs / (self.steps - self.rows):.0%} of steps (mean width {width:.1f})"
        return text


@attrs.define(eq=False)
class GenerationOutput:
    """The result of generate(): sequences like model.generate's, and statistics."""

    sequences: torch.Tensor  # (B, prompt + new) int64
    stats: GenerationStats
