"""The step planner: what one step puts through the model, from what drafts have earned and what a forward costs.

A strategy's sources offer *drafts*: candidate continuations of the pending token, each labelled with
its source ("context:3" for a context match of 3 tokens, "pool:window", "lookup:2", ...). The planner

1. estimates, for every node of the trie the drafts form, the probability that verification accepts
   it (`AcceptanceModel`: per source and depth, learnt from this decode's own steps);
2. picks the k most probable nodes, and at most one *extra* block of tokens with a value of its own
   (lookahead's window, whose n-grams pay in later steps), so as to maximise expected committed
   tokens per second of forward time on this machine (a cost model: `decodekit.core.costmodel`):

       rate(k, extra) = (1 + p_1 + ... + p_k + extra.value) / seconds(1 + extra.tokens + k, cached)

with each p scaled by the step calibration (`StepPlanner.calibration`: what drafted steps have
committed over what they were expected to, at most 1). A node is accepted only if its parent is, so
probabilities never grow along a path and the k most probable nodes form a prefix-closed subtree: a
tree the strategy can put through as it is. k = 0 with no extra is plain greedy's one-token step; it
wins whenever no draft pays for its cost, except on a probe (one token of a source this decode has no
evidence for, at most once every `StepPlanner.probe_interval` steps, and only where its estimate is
within reach of paying on this machine's curve: `StepPlanner.probe_reach`).

In a batch every row's step is padded to the longest row's and packed into one forward of
rows x T tokens, so one row's long draft costs every row. Each row still plans for itself, at the
packed cost (k tokens weigh as rows x k), but within a step size T the batch chooses: every row
offers, through its cost's `step_budget`, the most tokens each size could commit for it
(`best_values`), and the cost picks the T that maximises the batch's expected tokens per second,
sum over rows of values(T) / seconds(rows x T), for the next step (decodekit.core.costmodel.PackedCost).

The planner changes what is proposed, never what is accepted: a strategy that verifies as before
stays exact whatever the planner chooses (the property tests drive it with synthetic cost models).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence

import attrs


class ForwardCost(Protocol):
    """What the planner needs of a cost model: predicted seconds of one forward (only ratios matter)."""

    def seconds(self, tokens: int, cached: int) -> float: ...


class BatchCost(ForwardCost, Protocol):
    """A batch's cost (decodekit.core.costmodel.PackedCost): it bounds each row's step."""

    def step_budget(self, values: Sequence[float]) -> int | None:
        """Note what each step size is worth to this row (values[T - 1] for T tokens) and return how many
        tokens the row may put through this step (None: no bound)."""
        ...


@attrs.frozen(kw_only=True)
class Draft:
    """A candidate continuation of the pending token, and the source it came from."""

    tokens: tuple[int, ...] = attrs.field(converter=tuple)
    source: str


@attrs.frozen(kw_only=True)
class Extra:
    """A block of tokens a step may carry besides the drafts (lookahead's window): its size and worth.

    value: the tokens it is expected to commit, later steps included, in the unit of accepted tokens.
    """

    tokens: int
    value: float
    label: Any = None


@attrs.frozen(kw_only=True)
class PlannedStep:
    """The planner's choice for one step."""

    drafts: tuple[Draft, ...]  # the drafts to put through, each cut to its chosen prefix
    extra: Extra | None  # the extra block to carry, or None
    nodes: int  # distinct draft tokens (trie nodes) put through
    expected: float  # expected tokens committed this step, the bonus token included
    seconds: float  # predicted forward time

    @property
    def tokens(self) -> int:
        """Tokens in the step's forward: the pending token, the extra block and the draft nodes."""
        return 1 + (self.extra.tokens if self.extra else 0) + self.nodes


def _number(low: float, high: float | None, open_low: bool = False) -> Any:
    """An attrs validator: a finite number in [low, high] ((low, ...] with open_low; high None: no bound)."""
    allowed = f"{'(' if open_low else '['}{low}, {'inf)' if high is None else f'{high}]'}"

    def check(instance: Any, attribute: Any, value: Any) -> None:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (value > low if open_low else value >= low) and (high is None or value <= high))
        if not ok:
            raise ValueError(f"{type(instance).__name__}: {attribute.name}={value!r} is not allowed; it must be "
                             f"a finite number in {allowed}")
    return check


def _count(low: int) -> Any:
    """An attrs validator: an integer >= low."""
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise ValueError(f"{type(instance).__name__}: {attribute.name}={value!r} is not allowed; it must be "
                             f"an integer >= {low}")
    return check


@attrs.define(eq=False)
class AcceptanceModel:
    """P(a draft's d-th token is accepted | its first d-1 were), per (source, depth), from counts.

    Each (source, depth) keeps decayed counts of accepted and tried tokens (counts decay by `decay` each
    step, so old evidence fades and a text that turns to copying is noticed) under a Beta prior of weight
    `prior_weight`. The prior's mean (`prior`) says what an untried cell is worth before this decode has
    shown anything, and it is deliberately modest: on a machine where a forward of 2 tokens costs 1.5
    forwards of one, a first token must be accepted half the time to pay, and an optimistic prior makes
    the planner put through drafts that lose (docs/benchmarks.md, "The acceptance model, measured").
    - depth 1: `prior_mean`, plus `per_matched` for each token of the source's match beyond the first (a
      source "name:K" is a match of K tokens, as "context:3" or "lookup:2"), at most `prior_ceiling`: a
      long match of the text's end predicts a copy;
    - depth 2: `prior_deep`: a draft whose first token was right is more often right again;
    - depth 3 and on: the estimate at the depth before, so a source that has been right deep down
      (a copy) keeps its long drafts.
    The estimate is the posterior mean plus `optimism` standard deviations (0: none). Depths beyond
    `max_depth` share its counts.
    """

    prior_mean: float = attrs.field(default=0.15, validator=_number(0.0, 1.0))
    per_matched: float = attrs.field(default=0.1, validator=_number(0.0, 1.0))
    prior_ceiling: float = attrs.field(default=0.55, validator=_number(0.0, 1.0))
    prior_deep: float = attrs.field(default=0.5, validator=_number(0.0, 1.0))
    prior_weight: float = attrs.field(default=2.0, validator=_number(0.0, None, open_low=True))
    optimism: float = attrs.field(default=0.0, validator=_number(0.0, None))
    decay: float = attrs.field(default=0.97, validator=_number(0.0, 1.0, open_low=True))
    max_depth: int = attrs.field(default=8, validator=_count(1))
    counts: dict[tuple[str, int], list[float]] = attrs.Factory(dict)  # (source, depth) -> [accepted, tried]

    def prior(self, source: str, depth: int, before: float | None = None) -> float:
        """The Beta prior's mean for a (source, depth) cell (class docstring); `before`: the estimate at
        depth - 1, when the caller has it."""
        if depth >= 3:
            return self._cells(source, depth - 1)[-1][1] if before is None else before
        if depth == 2:
            return self.prior_deep
        tail = source.rpartition(":")[2]
        matched = int(tail) if tail.isdigit() else 1
        return min(self.prior_ceiling, self.prior_mean + self.per_matched * max(0, matched - 1))

    def probability(self, source: str, depth: int) -> float:
        return self._cells(source, depth)[-1][0]

    def _cells(self, source: str, depth: int) -> list[tuple[float, float]]:
        """(estimate, posterior mean) for depths 1 .. depth; beyond max_depth, max_depth's."""
        out: list[tuple[float, float]] = []
        for d in range(1, min(depth, self.max_depth) + 1):
            accepted, tried = self.counts.get((source, d), (0.0, 0.0))
            mean = self.prior(source, d, out[-1][1] if out else None)
            alpha = accepted + mean * self.prior_weight
            beta = tried - accepted + (1.0 - mean) * self.prior_weight
            total = alpha + beta
            spread = math.sqrt(alpha * beta / (total * total * (total + 1.0))) if self.optimism else 0.0
            out.append((min(1.0, alpha / total + self.optimism * spread), alpha / total))
        return out + [out[-1]] * (depth - len(out))

    def path(self, draft: Draft) -> list[float]:
        """P(the draft's first d tokens are all accepted), for d = 1..len(draft)."""
        out, running = [], 1.0
        for p, _ in self._cells(draft.source, len(draft.tokens)) if draft.tokens else ():
            running *= p
            out.append(running)
        return out

    def record(self, draft: Draft, matched: int) -> None:
        """A put-through draft whose first `matched` tokens were accepted: depths 1..matched+1 were tried."""
        for depth in range(1, min(len(draft.tokens), matched + 1) + 1):
            cell = self.counts.setdefault((draft.source, min(depth, self.max_depth)), [0.0, 0.0])
            cell[1] += 1.0
            cell[0] += 1.0 if depth <= matched else 0.0

    def tried(self, source: str, depth: int) -> float:
        """The (decayed) count of tokens tried at this source and depth."""
        return self.counts.get((source, min(depth, self.max_depth)), (0.0, 0.0))[1]

    def fade(self) -> None:
        """One step passed: older evidence weighs less."""
        for cell in self.counts.values():
            cell[0] *= self.decay
            cell[1] *= self.decay


def matched_length(draft: Sequence[int], committed: Sequence[int]) -> int:
    """How many leading tokens of a verified draft were accepted: its common prefix with the committed tokens.

    The committed tokens are the accepted path plus the bonus token, and the bonus differs from the next
    token of every draft that followed the accepted path (else verification would have accepted it).
    """
    n = 0
    for a, b in zip(draft, committed):
        if a != b:
            break
        n += 1
    return n


@attrs.define(eq=False)
class _Nodes:
    """The drafts' trie with an acceptance probability per node (parents before children)."""

    parents: list[int] = attrs.Factory(list)
    depths: list[int] = attrs.Factory(list)
    probs: list[float] = attrs.Factory(list)
    paths: list[list[int]] = attrs.Factory(list)  # per draft: its node indices in order

    @classmethod
    def build(cls, drafts: Sequence[Draft], acceptance: AcceptanceModel) -> "_Nodes":
        nodes = cls()
        index: dict[tuple[int, int], int] = {}
        for draft in drafts:
            parent, path = -1, []
            for depth, p in enumerate(acceptance.path(draft), start=1):
                key = (parent, draft.tokens[depth - 1])
                node = index.get(key)
                if node is None:
                    node = index[key] = len(nodes.parents)
                    nodes.parents.append(parent)
                    nodes.depths.append(depth)
                    nodes.probs.append(0.0)
                # drafts that share a node are not independent evidence (pool n-grams that share a first
                # token mostly come from the same text): the node is as likely as its likeliest draft
                nodes.probs[node] = max(nodes.probs[node], p)
                path.append(node)
                parent = node
            nodes.paths.append(path)
        nodes._make_consistent()
        return nodes

    def _make_consistent(self) -> None:
        """A child is at most as likely as its parent, and siblings (exclusive outcomes) sum to at most it."""
        children: dict[int, list[int]] = {}
        for node, parent in enumerate(self.parents):
            children.setdefault(parent, []).append(node)
        for parent in [-1, *range(len(self.parents))]:  # parents are created before their children
            kids = children.get(parent, [])
            if not kids:
                continue
            ceiling = 1.0 if parent < 0 else self.probs[parent]
            for kid in kids:
                self.probs[kid] = min(self.probs[kid], ceiling)
            total = sum(self.probs[k] for k in kids)
            if total > ceiling > 0:
                for kid in kids:
                    self.probs[kid] *= ceiling / total

    def ranked(self) -> list[int]:
        """Nodes by probability, ties by depth: every prefix of this order is prefix-closed."""
        return sorted(range(len(self.probs)), key=lambda n: (-self.probs[n], self.depths[n], n))


# One way to fill a step: (tokens, value, nodes, extra): `nodes` draft nodes and maybe an extra block, the
# step's size in tokens and its expected committed tokens. A plain tuple, not an attrs class: a step weighs
# up to (1 + extras) x (1 + max_nodes) of them on the host between two forwards, where every millisecond
# is one a greedy decode does not spend.
_Option = tuple[int, float, int, "Extra | None"]


def _options(gains: Sequence[float], extras: Sequence[Extra]) -> list[_Option]:
    """Every (extra, k) choice: k most probable nodes (gains[k]: their summed probabilities), with or without
    each extra block; the one-token step first, then by extra, then by k."""
    out = [(1 + k, 1.0 + gain, k, None) for k, gain in enumerate(gains)]
    for extra in extras:
        out += [(1 + extra.tokens + k, 1.0 + gain + extra.value, k, extra) for k, gain in enumerate(gains)]
    return out


def best_values(options: Sequence[_Option]) -> list[float]:
    """values[T - 1]: the most tokens a step of at most T tokens is expected to commit, T = 1 .. the largest option."""
    values = [0.0] * max(tokens for tokens, _, _, _ in options)
    for tokens, value, _, _ in options:
        values[tokens - 1] = max(values[tokens - 1], value)
    for i in range(1, len(values)):
        values[i] = max(values[i], values[i - 1])
    return values


@attrs.define(eq=False)
class StepPlanner:
    """Chooses each step's drafts (and extra block) from the acceptance model and the cost of a forward.

    Strategies call `plan` before a step's forward and `record` after verifying it. Plugin strategies
    use it the same way (the prompt-lookup plugin sizes its drafts with it).
    """

    cost: ForwardCost
    acceptance: AcceptanceModel = attrs.Factory(AcceptanceModel)
    max_nodes: int = attrs.field(default=64, validator=_count(0))
    # A probe: when no draft pays by its prior, the likeliest first token of a source with no evidence in
    # this decode (its first-token cell tried less than half a time, after fading) goes through anyway,
    # at most once every `probe_interval` steps: a modest prior alone would never try a source on a steep
    # curve, and so never see that the text has turned to copying. Its cost is bounded: one extra token
    # in `probe_interval` steps. 0: never probe.
    probe_interval: int = attrs.field(default=32, validator=attrs.validators.ge(0))
    # Only a node within reach is probed: its estimate must be at least `probe_reach` times the acceptance
    # at which one draft token breaks even on this machine, seconds(2) / seconds(1) - 1. On a flat curve
    # every untried source qualifies; on a steep one a weak source (a one-token match, a pool n-gram)
    # would need far more than one lucky acceptance to ever pay, so its probes would only cost.
    probe_reach: float = attrs.field(default=0.5, validator=_number(0.0, None))
    # steps since the last probe; it starts at the interval, so the first step may probe
    since_probe: int = attrs.field(init=False, default=attrs.Factory(lambda self: self.probe_interval, takes_self=True))
    # The step calibration: draft tokens committed and expected on the steps that put drafts through
    # (decayed as the acceptance model's counts). The cells are right on average, but the steps the
    # planner takes are those it rates highest, so what they were expected to commit runs high (the
    # winner's curse), and drafts from one text that share a step are not independent. Their ratio,
    # under a prior of `calibration_weight` expected tokens at 1, scales every draft's gain (at most 1).
    calibration_weight: float = attrs.field(default=4.0, validator=attrs.validators.gt(0))
    realized: list[float] = attrs.field(init=False, factory=lambda: [0.0, 0.0])  # [committed, expected]
    last_gain: float = attrs.field(init=False, default=0.0)  # the last plan's expected draft tokens, unscaled

    def plan(self, drafts: Sequence[Draft], cached: int, extras: Sequence[Extra] = ()) -> PlannedStep:
        """The drafts' prefixes (and extra) that maximise expected committed tokens per second of forward time.

        In a batch (a cost with `step_budget`, decodekit.core.costmodel.PackedCost) the row offers what
        each step size is worth to it and keeps within the size the batch chose (module docstring).
        """
        drafts = [d for d in drafts if d.tokens]
        nodes = _Nodes.build(drafts, self.acceptance)
        order = nodes.ranked()[: self.max_nodes]
        scale = self.calibration()
        gains = [0.0]
        for node in order:
            gains.append(gains[-1] + nodes.probs[node] * scale)
        options = _options(gains, extras)
        step_budget = getattr(self.cost, "step_budget", None)
        budget = step_budget(best_values(options)) if step_budget is not None else None
        seconds = self._predictions(cached)
        k, extra = self._fastest(options, seconds, budget)
        self.since_probe += 1
        if k == 0 and extra is None and self._probe(drafts, nodes, order, seconds, budget):
            k = 1
        chosen = set(order[:k])
        cut = []
        for draft, path in zip(drafts, nodes.paths):
            keep = 0
            while keep < len(path) and path[keep] in chosen:
                keep += 1
            if keep:
                cut.append(Draft(tokens=draft.tokens[:keep], source=draft.source))
        size = 1 + (extra.tokens if extra else 0) + k
        self.last_gain = gains[k] / scale
        return PlannedStep(drafts=tuple(cut), extra=extra, nodes=k,
                           expected=1.0 + gains[k] + (extra.value if extra else 0.0),
                           seconds=seconds(size))

    def _predictions(self, cached: int) -> Callable[[int], float]:
        """One plan's forward-cost predictions at `cached`, each size predicted once.

        Options share sizes, the probe's break-even and the chosen step ask again, and a prediction is
        not free; a cost that changes between calls is read once per size, so one plan sees one curve.
        """
        memo: dict[int, float] = {}  # tokens -> predicted seconds

        def seconds(tokens: int) -> float:
            if tokens not in memo:
                memo[tokens] = self.cost.seconds(tokens, cached)
            return memo[tokens]

        return seconds

    def _fastest(self, options: Sequence["_Option"], seconds: Callable[[int], float],
                 budget: int | None) -> tuple[int, Extra | None]:
        """The option of highest rate (expected tokens per second) within `budget` tokens; ties keep the smaller step.

        The first option is the one-token step, which always fits.
        """
        best_rate, best = 0.0, options[0][2:]
        for tokens, value, nodes, extra in options:
            if budget is not None and tokens > budget:
                continue
            rate = value / seconds(tokens)
            if rate > best_rate * (1 + 1e-9):  # a strict gain: ties keep the smaller step
                best_rate, best = rate, (nodes, extra)
        return best

    def _probe(self, drafts: Sequence[Draft], nodes: "_Nodes", order: Sequence[int],
               seconds: Callable[[int], float], budget: int | None) -> bool:
        """Whether this step probes its likeliest node (a first token: the top of `order` always is one)."""
        if not (self.probe_interval and order and self.since_probe >= self.probe_interval):
            return False
        if budget is not None and budget < 2:
            return False
        top = order[0]
        if not any(path and path[0] == top and self.acceptance.tried(draft.source, 1) < 0.5
                   for draft, path in zip(drafts, nodes.paths)):
            return False
        # the break-even comes last: size 2 may not have been predicted yet
        break_even = seconds(2) / seconds(1) - 1.0
        if nodes.probs[top] < self.probe_reach * break_even:
            return False
        self.since_probe = 0
        return True

    def calibration(self) -> float:
        """The factor on every draft's expected tokens: committed over expected on drafted steps, under the prior."""
        committed, expected = self.realized
        return min(1.0, (committed + self.calibration_weight) / (expected + self.calibration_weight))

    def record(self, drafts: Sequence[Draft], committed: Sequence[int]) -> None:
        """After verification: teach the acceptance model what each put-through draft earned."""
        self.acceptance.fade()
        self.realized = [x * self.acceptance.decay for x in self.realized]
        matched = [matched_length(draft.tokens, committed) for draft in drafts]
        if drafts:
            self.realized[0] += max(matched)
            self.realized[1] += self.last_gain
        self.last_gain = 0.0
        for draft, m in zip(drafts, matched):
            self.acceptance.record(draft, m)


def prefill_groups(lengths: Sequence[int], seconds: Any = None) -> list[list[int]]:
    """How a batch's prompts go through the model: groups of row indices, one packed forward each.

    A packed forward pads every row to its longest prompt, so a batch of a 700-token prompt and seven
    50-token ones computes 8 x 700 token slots for 1,050 tokens. Grouping rows of similar lengths
    costs more forwards but fewer slots. `seconds(tokens)` is the forward cost of that many token slots
    (None: one group, as model.generate pads). Groups are runs of the rows sorted by length, the
    partition of least predicted total time (dynamic programming); ties keep fewer groups.
    """
    rows = len(lengths)
    if seconds is None or rows < 2 or len(set(lengths)) == 1:
        return [list(range(rows))]
    order = sorted(range(rows), key=lambda b: (-lengths[b], b))  # longest first
    # best[i]: least time for order[i:]; its first group is order[i:cut[i]], padded to lengths[order[i]]
    best, cut = [0.0] * (rows + 1), [rows] * (rows + 1)
    for i in range(rows - 1, -1, -1):
        best[i] = math.inf
        for j in range(rows, i, -1):  # the largest group first: ties keep it
            total = seconds((j - i) * lengths[order[i]]) + best[j]
            if total < best[i] * (1 - 1e-9):
                best[i], cut[i] = total, j
    groups, i = [], 0
    while i < rows:
        groups.append(sorted(order[i:cut[i]]))
        i = cut[i]
    return groups
