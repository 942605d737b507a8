"""The forward cost model: how long one forward of the target model takes on this machine, as a
function of the new tokens it carries and of the cached positions before them.

Whether a step should put 1, 8 or 40 tokens through the model depends on this curve, and machines
differ radically: a 16-token bfloat16 forward costs 1.3x a one-token forward on one CPU and 4.6x on
another (issue 12), while on a GPU the curve stays flat far beyond 64 tokens. So it is measured:

- measure(model): real forwards through the backend after a cached prefix, every size timed a few times
  in a shuffled order (drift in the machine's speed hits every size alike) and the median kept, with
  one token and 16 tokens at a second, longer cache length in the same rounds, for how the cost grows
  with the cache. A few seconds.
- cost_model_for(model): memoised per model object; else read from costs/<key>.json under decodekit's
  cache directory, the key covering the model, dtype, device, torch threads, CPU model and flags, and
  torch version; else measured and saved there.
- CostModel.observe(): the timings of the forwards a decode actually runs correct it online, so a
  loaded machine, or one unlike the one measured, is corrected within a few dozen steps. Corrections
  live in memory only: the file keeps the measurement.

The planner only ever compares costs (the seconds of two candidate steps, or relative()), so anything
that scales every size alike (a uniformly loaded machine, the global correction) changes none of its
choices; what matters is the curve's shape.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import random
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Mapping, Sequence

import attrs
import torch

from decodekit.core.machine import cpu_info
from decodekit.errors import InputError

COST_FORMAT = 5  # bump when the file's layout or what measure() times or fits changes (2: the monotone fit; 3: 4x cached; 4: small counts first; 5: every count to 16)
# Every count up to 16, where the planner's steps mostly lie: a float32 matrix product on a CPU can run some
# counts far slower than their neighbours (3, 7 and 11 tokens at 1.96x, 1.70x and 1.73x a one-token forward
# against 1.46x, 1.33x and 1.54x for 4, 8 and 12 on a family 25 model 17 EPYC), and interpolating between
# measured counts hides that (docs/cost-model.md); then sparser, and beyond 64 the last segment's slope.
DEFAULT_TOKENS = (*range(1, 17), 24, 32, 48, 64)
CURVE_TOKENS = (1, 2, 4, 8, 16, 32, 64)
SECOND_TOKENS = 16  # the token count also timed at the second cache length
SECOND_FACTOR = 4  # the second cache length, in multiples of the first: far enough that the growth is not lost in noise
NEAR_FACTOR = 2  # ... on a machine where filling SECOND_FACTOR x would eat the budget
MIN_POINTS = 4  # a measurement keeps at least this many token counts, however slow the model
STEADY_ROUNDS = 3  # counts are dropped before rounds fall under this many
_FLOOR = 0.1  # a prediction below the reference cache length never drops under this fraction of base(k)


def _points(value: Any) -> tuple[tuple[int, float], ...]:
    """Mapping or pairs -> sorted ((tokens, seconds), ...), checked: tokens >= 1 with 1 present, seconds > 0."""
    pairs = value.items() if isinstance(value, Mapping) else value
    points = tuple(sorted((int(k), float(s)) for k, s in pairs))
    if not points or points[0][0] != 1:
        raise ValueError(f"CostModel: points must include 1 token (relative() divides by it), got token counts "
                         f"{[k for k, _ in points]}")
    for k, s in points:
        if k < 1 or not (math.isfinite(s) and s > 0):
            raise ValueError(f"CostModel: every point must be tokens >= 1 -> seconds > 0, got {k} -> {s}")
    if len({k for k, _ in points}) != len(points):
        raise ValueError(f"CostModel: token counts must be distinct, got {[k for k, _ in points]}")
    return points


def _non_negative(instance: Any, attribute: Any, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"CostModel: {attribute.name} must be a finite number >= 0, got {value}")


def _check_request(tokens: int, cached: int, rows: int = 1) -> None:
    if tokens < 1:
        raise ValueError(f"CostModel: tokens must be >= 1, got {tokens}")
    if cached < 0:
        raise ValueError(f"CostModel: cached must be >= 0, got {cached}")
    if not 1 <= rows <= tokens:
        raise ValueError(f"CostModel: rows must be in [1, tokens={tokens}] (each row puts a token through), got {rows}")


@attrs.define(eq=False, kw_only=True)
class CostModel:
    """Predicted wall seconds of one forward of `tokens` new tokens after `cached` cached positions.

    The measured part (plain data, what the cache file holds):
        base(k)      piecewise linear through `points` (seconds at `reference_cached`); beyond the last
                     point, the last segment's slope, never below the last value
        raw(k, c)  = base(k) + (c - reference_cached) * (per_cached + per_cached_token * (k - 1)),
                     never below a tenth of base(k)
        raw(k, c, rows): a packed forward of `rows` rows over a dense cache of c columns, k tokens in all:
                     each row's queries read that row's c cached keys and values, so every row after
                     the first adds c * per_cached (the memory one row's cache costs) to raw(k, c)
    The online part (observe): seconds(k, c) = raw(k, c) * exp(global + shape(log2 k)), where `global`
    follows the mean log ratio observed / raw (a uniformly slower machine) and `shape` the rest, per
    power-of-two anchor of the token count, interpolated between observed anchors and held flat beyond
    them. Both are exponential moving averages, each observation's ratio clamped to [1/4, 4] so that one
    stall cannot wreck them; the shape moves slower than the global factor.
    """

    points: tuple[tuple[int, float], ...] = attrs.field(converter=_points)
    reference_cached: int = attrs.field(default=256, validator=attrs.validators.ge(0))
    per_cached: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    per_cached_token: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    info: dict[str, Any] = attrs.field(factory=dict)  # how it was measured, for reports; predictions never read it
    global_rate: float = 0.1  # weight of one observation in the global factor's moving average
    shape_rate: float = 0.05  # ... and in the per-size shape correction
    clamp: tuple[float, float] = (0.25, 4.0)  # one observation's ratio observed / predicted is clamped to this
    observations: int = attrs.field(default=0, init=False)
    _global_log: float = attrs.field(default=0.0, init=False)
    _shape_log: dict[int, float] = attrs.field(factory=dict, init=False)  # log2 anchor -> log correction

    # -- constructors ----------------------------------------------------------------------------

    @classmethod
    def from_points(cls, points: Mapping[int, float], *, reference_cached: int = 256, per_cached: float = 0.0,
                    per_cached_token: float = 0.0) -> "CostModel":
        """Seconds per token count at `reference_cached`; per_cached: seconds added per cached position
        (per_cached_token: added per cached position and per token beyond the first)."""
        return cls(points=points, reference_cached=reference_cached, per_cached=per_cached,
                   per_cached_token=per_cached_token)

    @classmethod
    def flat(cls, seconds: float = 0.01) -> "CostModel":
        """The same cost for any token count (a GPU far below its compute limit)."""
        return cls(points={1: seconds})

    @classmethod
    def linear(cls, base: float, per_token: float) -> "CostModel":
        """base + per_token * (tokens - 1), for any token count."""
        if not (math.isfinite(per_token) and per_token >= 0):
            raise ValueError(f"CostModel.linear: per_token must be a finite number >= 0, got {per_token}")
        return cls(points={1: base, 2: base + per_token})

    # -- predictions -----------------------------------------------------------------------------

    def base(self, tokens: int) -> float:
        """Seconds at reference_cached, from the measured points alone."""
        points = self.points
        if tokens <= points[0][0]:
            return points[0][1]
        for (k0, s0), (k1, s1) in zip(points, points[1:]):
            if tokens <= k1:
                return s0 + (s1 - s0) * (tokens - k0) / (k1 - k0)
        if len(points) == 1:
            return points[0][1]
        (k0, s0), (k1, s1) = points[-2], points[-1]
        return max(s1, s1 + (s1 - s0) / (k1 - k0) * (tokens - k1))  # the last segment's slope, never below s1

    def raw(self, tokens: int, cached: int, rows: int = 1) -> float:
        """The measured prediction, before online corrections (`tokens` in all, over `rows` rows)."""
        _check_request(tokens, cached, rows)
        base = self.base(tokens)
        grown = base + (cached - self.reference_cached) * (self.per_cached + self.per_cached_token * (tokens - 1))
        return max(grown, _FLOOR * base) + (rows - 1) * cached * self.per_cached

    def seconds(self, tokens: int, cached: int, rows: int = 1) -> float:
        return self.raw(tokens, cached, rows) * math.exp(self._global_log + self._shape_at(math.log2(tokens)))

    def relative(self, tokens: int, cached: int, rows: int = 1) -> float:
        """seconds(tokens, cached, rows) / seconds(rows, cached, rows): what a step of `tokens` costs in steps
        of one token per row."""
        return self.seconds(tokens, cached, rows) / self.seconds(rows, cached, rows)

    def curve(self, cached: int, tokens: Sequence[int] = CURVE_TOKENS) -> list[tuple[int, float]]:
        """[(tokens, seconds), ...] at `cached` cached positions."""
        return [(int(k), self.seconds(int(k), cached)) for k in tokens]

    # -- online refinement -----------------------------------------------------------------------

    def observe(self, tokens: int, cached: int, seconds: float, rows: int = 1) -> None:
        """Correct the model with a real forward's wall time (`tokens` new in all, over `rows` rows, after
        `cached` cached columns)."""
        _check_request(tokens, cached, rows)
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"CostModel.observe: seconds must be a finite number > 0, got {seconds}")
        raw = self.raw(tokens, cached, rows)
        x = math.log2(tokens)
        # the global factor follows the mean log ratio observed / raw
        self._global_log += self.global_rate * self._clamped_log(seconds / (raw * math.exp(self._global_log)))
        # the shape follows what remains, shared between the two power-of-two anchors around log2(tokens)
        error = self._clamped_log(seconds / (raw * math.exp(self._global_log + self._shape_at(x))))
        low, high = math.floor(x), math.ceil(x)
        weights = {low: 1.0} if low == high else {low: high - x, high: x - low}
        for anchor in weights:  # a new anchor starts from what it predicted, so adding it changes nothing
            self._shape_log.setdefault(anchor, self._shape_at(anchor))
        for anchor, weight in weights.items():
            self._shape_log[anchor] += self.shape_rate * weight * error
        self.observations += 1

    def frozen(self) -> "CostModel":
        """A copy that never learns from observe() (deterministic planning: tests, a curve to keep as given)."""
        return attrs.evolve(self, global_rate=0.0, shape_rate=0.0)

    def reset_corrections(self) -> None:
        """Forget every observation: back to the measured prediction."""
        self._global_log, self._shape_log, self.observations = 0.0, {}, 0

    def _clamped_log(self, ratio: float) -> float:
        low, high = self.clamp
        return math.log(min(max(ratio, low), high))

    def _shape_at(self, x: float) -> float:
        """The shape correction (log) at log2(tokens) = x: linear between observed anchors, flat beyond."""
        if not self._shape_log:
            return 0.0
        anchors = sorted(self._shape_log)
        if x <= anchors[0]:
            return self._shape_log[anchors[0]]
        for a0, a1 in zip(anchors, anchors[1:]):
            if x <= a1:
                v0, v1 = self._shape_log[a0], self._shape_log[a1]
                return v0 + (v1 - v0) * (x - a0) / (a1 - a0)
        return self._shape_log[anchors[-1]]

    # -- to and from JSON ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The measured part as plain JSON (corrections are not saved: they describe this process's load)."""
        return {"points": [[k, s] for k, s in self.points], "reference_cached": self.reference_cached,
                "per_cached": self.per_cached, "per_cached_token": self.per_cached_token, "info": self.info}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CostModel":
        """Inverse of to_json; raises ValueError, KeyError or TypeError on a malformed document."""
        return cls(points=[tuple(p) for p in data["points"]], reference_cached=int(data["reference_cached"]),
                   per_cached=data["per_cached"], per_cached_token=data["per_cached_token"],
                   info=dict(data.get("info") or {}))


# -- measuring ------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a clock read after a forward covers all of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@attrs.define(eq=False)
class _Bench:
    """One cache and the timing of forwards after it: decodekit's own cache, masks and positions."""

    backend: Any  # HFBackend
    generator: torch.Generator  # private: the prefix and the new tokens are random but seeded
    cache: Any = None
    length: int = 0

    def fill(self, length: int) -> float:
        """Extend the cache to `length` positions with random tokens; returns the seconds it took."""
        from decodekit.core.masks import additive_mask, causal_layout

        if self.cache is None:
            self.cache, self.length = self.backend.new_cache(), 0
        count = length - self.length
        ids = torch.randint(0, self.backend.vocab_size, (count,), generator=self.generator)  # (count,)
        layout = causal_layout(count)
        mask = additive_mask(layout, self.length, self.backend.dtype, self.backend.device)  # (1, 1, count, S)
        began = time.perf_counter()
        self.backend.forward(ids, torch.arange(self.length, length), self.cache, mask=mask, logits_to_keep=1)
        synchronize(self.backend.device)
        self.length = length
        return time.perf_counter() - began

    def time(self, tokens: int) -> float:
        """Seconds of one forward of `tokens` new tokens (causal mask, every row's logits); the cache is
        cropped back afterwards."""
        from decodekit.core.masks import additive_mask, causal_layout, position_ids

        layout = causal_layout(tokens)
        ids = torch.randint(0, self.backend.vocab_size, (tokens,), generator=self.generator)  # (T,)
        mask = additive_mask(layout, self.length, self.backend.dtype, self.backend.device)  # (1, 1, T, S)
        positions = position_ids(layout, self.length)  # (T,)
        synchronize(self.backend.device)
        began = time.perf_counter()
        self.backend.forward(ids, positions, self.cache, mask=mask, logits_to_keep=0)  # (T, V)
        synchronize(self.backend.device)
        seconds = time.perf_counter() - began
        self.backend.crop_cache(self.cache, self.length)
        return seconds


def _priority(sizes: Sequence[int]) -> list[int]:
    """`sizes` (sorted) in the order a short measurement keeps them: the smallest, 2 and 4 (a steep machine's
    steps are small, and these are the cheapest to time), the largest (what lies beyond is extrapolated from
    it), the other powers of two up, then the rest up. Interpolating between powers of two stays close to a
    concave curve; 1 -> 6 in one segment does not (a forward of 2 tokens can cost 1.5x one of 1)."""
    first = [k for k in (sizes[0], 2, 4, sizes[-1]) if k in sizes]
    powers = [k for k in sizes if k & (k - 1) == 0]
    return list(dict.fromkeys([*first, *powers, *sizes]))  # in that order, each once


def _thin(sizes: Sequence[int], count: int) -> list[int]:
    """The first `count` of `sizes` (sorted) by `_priority`, sorted."""
    return sorted(_priority(sizes)[:count])


def plan(sizes: Sequence[int], repeats: int, estimate: Any, budget_s: float) -> tuple[list[int], int]:
    """The most token counts timed at least STEADY_ROUNDS times (then the most repeats), whose timing fits
    `budget_s` by `estimate(k)` seconds.

    A median of fewer rounds is one stall away from a wrong curve, so counts go first (by `_priority`,
    never under MIN_POINTS); only if MIN_POINTS counts do not fit STEADY_ROUNDS rounds do the rounds drop
    (never under one); if even the smallest plan does not fit, the smallest plan.
    """
    least = min(MIN_POINTS, len(sizes))
    steady = min(STEADY_ROUNDS, repeats)
    plans = [(count, rounds) for count in range(len(sizes), least - 1, -1) for rounds in range(repeats, steady - 1, -1)]
    plans += [(least, rounds) for rounds in range(steady - 1, 0, -1)]  # the fewest counts, fewer rounds
    for count, rounds in plans:
        chosen = _thin(sizes, count)
        if rounds * sum(estimate(k) for k in chosen) <= budget_s:
            return chosen, rounds
    return _thin(sizes, least), 1


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _spread(values: Sequence[float]) -> float:
    """A robust standard deviation of repeated timings (1.4826 x the median absolute deviation)."""
    middle = _median(values)
    return 1.4826 * _median([abs(v - middle) for v in values])


def monotone(points: Mapping[int, float], spread: Mapping[int, float] | None = None) -> dict[int, float]:
    """Seconds by token count with the dips that are noise pooled away (pool adjacent violators).

    A forward of more tokens does at least the work of one of fewer, so a size timed below a smaller
    one is usually noise; left in, the planner would favour that size for nothing. Each run of sizes
    that violates the order is replaced by its mean (the least-squares non-decreasing fit). But some
    kernels do run a few tokens slower than more (a small matrix product on a slower path): with
    `spread` (each size's robust standard deviation over the rounds), a dip more than twice the
    spread of the sizes involved is kept as measured. Without it every dip is pooled.
    """
    blocks: list[list[Any]] = []  # [sum of seconds, sizes pooled, token counts]
    for k in sorted(points):
        blocks.append([points[k], 1, [k]])
        while len(blocks) > 1:
            (total_a, count_a, keys_a), (total_b, count_b, keys_b) = blocks[-2], blocks[-1]
            dip = total_a / count_a - total_b / count_b
            noise = 0.0 if spread is None else 2 * max(spread.get(key, 0.0) for key in keys_a + keys_b)
            if dip <= 0 or (spread is not None and dip > noise):
                break
            blocks.pop()
            blocks[-1] = [total_a + total_b, count_a + count_b, keys_a + keys_b]
    return {k: total / count for total, count, keys in blocks for k in keys}


def _longest(backend: Any) -> int | None:
    limits = [n for n in (backend.max_positions, backend.sliding_window) if n is not None]
    return min(limits) if limits else None


def _same(value: Any) -> Any:
    """A decision as this process made it (one rank; `Ranks.agree` on several)."""
    return value


def _rounds(jobs: Sequence[tuple[_Bench, int]], repeats: int, rng: random.Random,
            deadline: float, agree: Any = _same) -> tuple[list[list[float]], int]:
    """(seconds per job, one per round; rounds run) over up to `repeats` rounds, each timing every job (a
    cache and a token count) once in a shuffled order; after the first round, no round starts past
    `deadline` (a machine slower than estimated ends near the budget). `agree` makes that decision rank
    0's on a sharded model, whose ranks must run the same forwards."""
    times: list[list[float]] = [[] for _ in jobs]
    done = 0
    while done < repeats and not (done and agree(time.perf_counter() > deadline)):
        order = list(range(len(jobs)))
        rng.shuffle(order)
        for i in order:
            bench, tokens = jobs[i]
            times[i].append(bench.time(tokens))
        done += 1
    return times, done


def measure(model: Any, *, cached: int = 256, tokens: Sequence[int] = DEFAULT_TOKENS, repeats: int = 5,
            budget_s: float = 12.0) -> CostModel:
    """Time real forwards of `model` and fit a CostModel, in about `budget_s` seconds.

    After a prefix of `cached` random (seeded) tokens, each count in `tokens` (1 always included) goes
    through one forward with a 4-D causal mask and every row's logits, as a step's forward does,
    `repeats` times in shuffled orders; the medians, with dips within the rounds' noise pooled
    (`monotone`), are the curve (info["measured_points"] keeps them as measured). A slow model gets fewer counts (at least
    four), then fewer repeats. A second cache, SECOND_FACTOR times `cached` long (within what the model
    attends over), has 1 and 16 tokens timed in the same rounds: how the cost grows with the cache,
    from each round's difference between the two lengths.

    A model sharded over several ranks runs each forward on all of them: every decision that depends on a
    clock (which counts, how many rounds) is rank 0's, and so is the curve returned, so that every rank
    plans its steps alike.
    """
    from decodekit.core.backend import HFBackend

    if cached < 1:
        raise InputError(f"measure: cached must be >= 1, got {cached}")
    sizes = sorted({int(k) for k in tokens} | {1})
    if sizes[0] < 1:
        raise InputError(f"measure: tokens must all be >= 1, got {list(tokens)}")
    if repeats < 1:
        raise InputError(f"measure: repeats must be >= 1, got {repeats}")
    if not budget_s > 0:
        raise InputError(f"measure: budget_s must be a number of seconds > 0, got {budget_s}")
    backend = HFBackend.for_model(model)
    backend.check_length(cached + sizes[-1], f"measure: cached {cached} + the largest token count {sizes[-1]}")
    agree = backend.ranks.agree if backend.ranks is not None else _same
    load_before = _load_average()
    began = time.perf_counter()
    with torch.inference_mode():
        bench = _Bench(backend, torch.Generator().manual_seed(0))
        prefill = bench.fill(cached)
        estimate = _warm_up(bench, sizes)
        longest = _longest(backend)
        second = _second_length(cached, longest, prefill, budget_s)
        rounds_at_second = min(STEADY_ROUNDS, repeats) * (estimate(1) + estimate(SECOND_TOKENS))
        second_cost = 0.0 if second <= cached else prefill * second / cached + 1.5 * rounds_at_second
        left = budget_s - (time.perf_counter() - began) - second_cost
        chosen, rounds = agree(plan(sizes, repeats, estimate, left))
        jobs = [(bench, k) for k in chosen]
        far_sizes: list[int] = []
        if second > cached:  # the second cache length is timed in the same rounds: drift between rounds hits both
            far = _Bench(backend, torch.Generator().manual_seed(1))
            far.fill(second)
            far_sizes = sorted({1, min(chosen[1:] or chosen, key=lambda k: abs(k - SECOND_TOKENS))})
            jobs += [(far, k) for k in far_sizes]
        rng = random.Random(0)
        timed, rounds = _rounds(jobs, rounds, rng, deadline=began + budget_s, agree=agree)
        times = dict(zip(chosen, timed))
        measured = {k: _median(v) for k, v in times.items()}
        # with three rounds or more, a dip beyond the rounds' spread is the kernels', not noise: it stays
        medians = monotone(measured, {k: _spread(v) for k, v in times.items()} if rounds >= 3 else None)
        per_cached, per_cached_token, at_second = 0.0, 0.0, {}
        if far_sizes:
            far_times = dict(zip(far_sizes, timed[len(chosen):]))
            at_second = {k: _median(v) for k, v in far_times.items()}
            per_cached, per_cached_token = _cache_slopes(times, far_times, far_sizes[-1], second - cached)
    info = {
        "measured_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "measure_seconds": round(time.perf_counter() - began, 3), "repeats": rounds,
        "measured_points": [[k, s] for k, s in sorted(measured.items())],  # the medians before the monotone fit
        "second_cached": second if at_second else None,
        "second_points": [[k, s] for k, s in sorted(at_second.items())],
        "torch_threads": torch.get_num_threads(), "load_average": load_before, "load_average_after": _load_average(),
    }
    return agree(CostModel(points=medians, reference_cached=cached, per_cached=per_cached,
                           per_cached_token=per_cached_token, info=info))


def _second_length(cached: int, longest: int | None, prefill: float, budget_s: float) -> int:
    """The second cache length: SECOND_FACTOR x `cached` (within what the model attends over), or only
    NEAR_FACTOR x where filling that much would take over a quarter of the budget (`prefill`: the seconds
    `cached` positions took), so that a slow machine keeps its budget for the token counts, which the
    planner's choices turn on."""
    factor = SECOND_FACTOR if prefill * SECOND_FACTOR <= budget_s / 4 else NEAR_FACTOR
    return factor * cached if longest is None else min(factor * cached, longest - SECOND_TOKENS)


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _warm_up(bench: _Bench, sizes: Sequence[int]) -> Any:
    """Run the smallest and largest forward (first calls pay one-time costs), then time the smallest, a
    middle and the largest once; return an estimate of any size's seconds, linear between those three."""
    for k in (sizes[0], sizes[-1]):
        bench.time(k)
    middle = min(sizes, key=lambda k: abs(math.log(k) - math.log(sizes[0] * sizes[-1]) / 2))
    timed = CostModel(points={k: max(bench.time(k), 1e-9) for k in sorted({sizes[0], middle, sizes[-1]})})
    return timed.base


def _cache_slopes(near: Mapping[int, Sequence[float]], far: Mapping[int, Sequence[float]], k2: int,
                  extra: int) -> tuple[float, float]:
    """(per_cached, per_cached_token) from 1 and k2 tokens timed in the same rounds at two cache lengths
    `extra` apart: each growth is the median over rounds of that round's difference, so a machine whose
    speed drifts from round to round moves both lengths alike; noise that makes a slope negative counts as
    no growth."""
    def growth(k: int) -> float:
        return _median([f - n for n, f in zip(near[k], far[k])]) / extra

    one = max(growth(1), 0.0)
    if k2 == 1:
        return one, 0.0
    return one, max((max(growth(k2), 0.0) - one) / (k2 - 1), 0.0)


# -- the per-machine cache ------------------------------------------------------------------------

_MEMO: "weakref.WeakKeyDictionary[Any, dict[str, CostModel]]" = weakref.WeakKeyDictionary()


def cost_key(model: Any) -> dict[str, Any]:
    """Everything a measurement depends on: the model (class, sizes, attention, dtype, device), torch's
    threads and version, the CPU (model, family, the flags that matter) or the GPU."""
    from decodekit.core.backend import cost_identity

    identity = cost_identity(model)
    key = {"format": COST_FORMAT, **identity, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           **cpu_info()}
    if identity["device"].startswith("cuda"):
        key["gpu"] = torch.cuda.get_device_name(torch.device(identity["device"]))
    return key


def costs_dir() -> Path:
    """Where measured cost models are kept: $DECODEKIT_COSTS if set, else costs/ under decodekit's cache
    directory (DECODEKIT_CACHE, ...). The test suite points DECODEKIT_COSTS at a folder of its own, so
    the curves its runs measure never reach the user's cache."""
    from decodekit.models import cache_dir

    override = os.environ.get("DECODEKIT_COSTS")
    return Path(override).expanduser() if override else cache_dir() / "costs"


def cost_path(key: Mapping[str, Any]) -> Path:
    """costs_dir()/<model type>-<dtype>-<device>-<threads>t-<hash of the whole key>.json"""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = f"{key.get('model_type') or key['class']}-{key['dtype']}-{key['device']}-{key['torch_threads']}t-{digest}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return costs_dir() / f"{safe}.json"


def _read(path: Path, key: Mapping[str, Any]) -> CostModel | None:
    """The saved model at `path`; None if there is none; one line on stderr if it is unreadable."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("key") != dict(key):
            raise ValueError("it was written for another model or machine")
        return CostModel.from_json(doc["cost"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        print(f"decodekit: the forward cost model in {path} is unreadable ({exc}); measuring it again", file=sys.stderr)
        return None


def save(cost: CostModel, key: Mapping[str, Any]) -> Path | None:
    """Write `cost` under its key's path, atomically; None (and one warning line) if that cannot be done."""
    from decodekit.fileio import write_text

    path = cost_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"key": dict(key), "cost": cost.to_json()}, indent=1) + "\n")
    except OSError as exc:
        print(f"decodekit: warning: cannot save the forward cost model to {path} ({exc}); "
              f"it will be measured again in the next process", file=sys.stderr)
        return None
    return path


def cost_model_for(model: Any) -> CostModel:
    """The cost model of `model` on this machine: memoised per model object, else read from the disk
    cache, else measured (a few seconds) and saved. Its online corrections are shared by every user of
    the same model object in this process.

    A model sharded over several ranks: rank 0 reads the file, every rank measures together if it has
    none (measure() returns rank 0's curve on every rank), rank 0 saves it."""
    from decodekit.core.backend import model_ranks

    key = cost_key(model)
    name = cost_path(key).name
    memo = _MEMO.setdefault(model, {})
    if name not in memo:
        path = cost_path(key)
        ranks = model_ranks(model)
        first = ranks is None or ranks.rank == 0
        cost = _read(path, key) if first else None  # a damaged file is reported there
        if ranks is not None:
            cost = ranks.agree(cost)
        if cost is None:
            if first and not path.exists():
                print("decodekit: measuring what a forward of this model costs on this machine (once per model, "
                      "dtype and thread count; a few seconds) ...", file=sys.stderr, flush=True)
            cost = measure(model)
            if first:
                save(cost, key)
        memo[name] = cost
    return memo[name]


def use_cost_model(model: Any, cost: CostModel) -> None:
    """Make cost_model_for(model) return `cost` in this process (tests, or a curve measured elsewhere)."""
    _MEMO.setdefault(model, {})[cost_path(cost_key(model)).name] = cost


def calibrate(model: Any, **measure_kwargs: Any) -> tuple[CostModel, Path | None]:
    """Measure again whatever is cached (on disk and in memory); (the model, where it was saved or None)."""
    from decodekit.core.backend import model_ranks

    key = cost_key(model)
    cost = measure(model, **measure_kwargs)  # rank 0's curve on every rank of a sharded model
    ranks = model_ranks(model)
    path = save(cost, key) if ranks is None or ranks.rank == 0 else None
    _MEMO.setdefault(model, {})[cost_path(key).name] = cost
    return cost, path


def _packed_seconds(model: Any, tokens: int, cached: int, rows: int) -> float:
    """What `model` predicts for a packed forward; a cost model of the plain `seconds(tokens, cached)`
    protocol (a user's own) is asked for the tokens alone."""
    if isinstance(model, CostModel):
        return model.seconds(tokens, cached, rows)
    return model.seconds(tokens, cached)


@attrs.define(eq=False)
class PackedCost:
    """The cost one row of a batch sees: its step is padded and packed with the other rows' into one forward.

    When `rows` rows each put k tokens through, the forward computes rows * k tokens over the batch's
    dense cache, `width` columns wide whatever the row's own length (every row's queries span them all,
    the other rows' columns masked), each row reading its own keys and values: so a row's planner
    weighs k tokens at the cost of rows * k tokens after `width` cached, over `rows` rows
    (CostModel.raw), and drafts shrink as the batch grows. With one row it is the model's own cost. `model`
    is resolved on first use (cost_model_for), so a strategy that never plans never triggers a
    measurement; the loop refines it from the packed forwards' timings once resolved.

    Padding makes the step as long as the longest row's, so the batch bounds every row's step: each
    planning row offers its best expected tokens per step size (`step_budget`), and after the rows
    have proposed, `settle` picks the size T that maximises the batch's expected tokens per second,
    sum of the rows' values at T / seconds(rows * T), as the next step's bound. It lags one step
    (the rows' drafts change slowly); a row that drafts nothing still takes one token.
    """

    target: Any  # the HF model whose forward is costed
    model: Any = None  # its CostModel, once resolved
    rows: int = 1
    width: int | None = None  # the dense cache's columns this step (the loop sets it); None: the row's own length
    budget: int | None = None  # the bound on every row's step, settled from the previous step's offers
    offers: list[list[float]] = attrs.Factory(list)  # this step's: each planning row's values by step size

    def resolved(self) -> Any:
        if self.model is None:
            self.model = cost_model_for(self.target)
        return self.model

    def span(self, cached: int) -> int:
        """The cached columns a packed forward attends over, for a row holding `cached` positions."""
        return cached if self.rows == 1 or self.width is None else max(cached, self.width)

    def seconds(self, tokens: int, cached: int) -> float:
        return _packed_seconds(self.resolved(), self.rows * tokens, self.span(cached), self.rows)

    def relative(self, tokens: int, cached: int) -> float:
        return self.seconds(tokens, cached) / self.seconds(1, cached)

    def observe(self, tokens: int, cached: int, seconds: float, rows: int = 1) -> None:
        """A packed forward of `tokens` tokens in all (every row's, padding included), over `rows` rows and a
        dense cache of `cached` columns, took `seconds`."""
        if isinstance(self.model, CostModel):
            self.model.observe(tokens, cached, seconds, rows)
        elif self.model is not None and hasattr(self.model, "observe"):
            self.model.observe(tokens, cached, seconds)

    def prompt_seconds(self, tokens: int) -> float:
        """What one forward of `tokens` token slots over an empty cache costs (a batch's prefill)."""
        return self.resolved().seconds(tokens, 0)

    def step_budget(self, values: Sequence[float]) -> int | None:
        """A row's planner: values[T - 1] is the most tokens a step of T tokens may commit for it. Returns
        the bound on its step now (None alone or before the batch's first offers)."""
        if self.rows == 1:
            return None
        self.offers.append(list(values))
        return self.budget

    def settle(self, cached: int) -> None:
        """The rows have proposed: choose the next step's bound from their offers (the rows that offered
        nothing count as one token whatever the size); `cached`: the dense cache's columns."""
        offers, self.offers = self.offers, []
        if self.rows == 1:
            self.budget = None
            return
        if not offers:  # no row planned (none had anything to draft): every row took one token
            self.budget = 1
            return
        others = self.rows - len(offers)
        best_rate, best = 0.0, 1
        for size in range(1, max(len(v) for v in offers) + 1):
            worth = others + sum(v[min(size, len(v)) - 1] for v in offers)
            rate = worth / _packed_seconds(self.resolved(), self.rows * size, cached, self.rows)
            if rate > best_rate * (1 + 1e-9):  # ties keep the smaller step
                best_rate, best = rate, size
        self.budget = best
