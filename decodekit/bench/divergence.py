"""Where an output parts from greedy's, and whether greedy's choice there was a numerical near-tie.

Outside float64/float32 a many-token forward rounds differently from a one-token forward, so an exact
strategy's output can part from greedy's where greedy's two best tokens are nearly equal. At the first
differing new token, greedy's top-2 logit margin (best minus second best, from one forward of the prompt
and the new tokens both outputs share) tells the two cases apart:

- a *near-tie*: the margin is below NEAR_TIE_MARGIN[dtype]; a different (equally correct) order of
  floating-point additions can swap the two tokens. Reported, not a failure.
- otherwise (a margin at or above it, or one output a strict prefix of the other): no rounding explains it.

`decodekit verify` and the benchmark (decodekit.bench) classify with the same margins and thresholds.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import torch

from decodekit.core.sequences import first_difference

# Below this greedy top-2 logit margin a first difference counts as a numerical near-tie. The values
# are a few times the logit error a reordered reduction causes in a ~100M-parameter model at that
# precision (a few units in the last place of logits of magnitude ~10-30).
NEAR_TIE_MARGIN = {"float64": 1e-6, "float32": 1e-3, "float16": 5e-2, "bfloat16": 2.5e-1}


def dtype_name(model: Any) -> str:
    """The model's parameter dtype as NEAR_TIE_MARGIN names it ("bfloat16", ...)."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def top2_margin(model: Any, prefix: Sequence[int]) -> float:
    """Greedy's top-2 logit margin after `prefix`: logit of the best token minus the second best."""
    from decodekit.core.backend import HFBackend

    backend = HFBackend.for_model(model)
    ids = torch.tensor(list(prefix), dtype=torch.long)  # (L,)
    with torch.inference_mode():
        logits = backend.forward(ids, torch.arange(ids.shape[0]), backend.new_cache(), None, logits_to_keep=1)  # (1, V)
    top = logits[-1].double().topk(2).values  # (2,)
    return float(top[0] - top[1])


@attrs.frozen
class Divergence:
    """How one output compares with greedy's on the same prompt.

    position: the first differing new token (None: identical); margin: greedy's top-2 logit margin there
    (None when identical or when one output is a strict prefix of the other); near_tie: margin < threshold.
    """

    position: int | None = None
    margin: float | None = None
    near_tie: bool | None = None

    @property
    def identical(self) -> bool:
        return self.position is None


@attrs.define(eq=False)
class Margins:
    """Classifies outputs against greedy's for one model, each greedy prefix's margin computed once."""

    model: Any
    threshold: float | None = None  # None: NEAR_TIE_MARGIN of the model's dtype (float32's for others)
    _memo: dict[tuple[int, ...], float] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        if self.threshold is None:
            self.threshold = NEAR_TIE_MARGIN.get(dtype_name(self.model), NEAR_TIE_MARGIN["float32"])

    def margin(self, prefix: Sequence[int]) -> float:
        key = tuple(prefix)
        if key not in self._memo:
            self._memo[key] = top2_margin(self.model, key)
        return self._memo[key]

    def compare(self, prompt: Sequence[int], greedy: Sequence[int], output: Sequence[int]) -> Divergence:
        """`output` (new tokens) against greedy's new tokens after the same prompt."""
        at = first_difference(list(greedy), list(output))
        if at is None:
            return Divergence()
        if at >= len(greedy) or at >= len(output):  # one stopped where the other went on: not a rounding swap
            return Divergence(position=at, near_tie=False)
        margin = self.margin(list(prompt) + list(greedy[:at]))
        return Divergence(position=at, margin=margin, near_tie=margin < self.threshold)
