"""The step planner's decisions: what it puts through on flat and steep cost curves, and when it stops drafting."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from decodekit.core.costmodel import CostModel, PackedCost
from decodekit.core.planner import (AcceptanceModel, Draft, Extra, StepPlanner, _Nodes, _options, best_values,
                                   matched_length, prefill_groups)

FLAT = CostModel.flat(0.01)
STEEP = CostModel.linear(base=0.01, per_token=0.01)  # every extra token costs a whole forward
GENTLE = CostModel.linear(base=0.01, per_token=0.001)

DRAFTS = [Draft(tokens=(1, 2, 3, 4, 5, 6, 7, 8), source="context:4"), Draft(tokens=(1, 2, 9), source="pool:text"),
          Draft(tokens=(3, 4, 5), source="pool:window"), Draft(tokens=(7,), source="pool:text")]


def test_a_flat_curve_puts_the_whole_tree_through():
    step = StepPlanner(cost=FLAT).plan(DRAFTS, cached=100)
    assert step.nodes == 8 + 1 + 3 + 1  # every distinct trie node: (1, 2) is shared
    assert {d.tokens for d in step.drafts} == {d.tokens for d in DRAFTS}
    assert step.expected > 1.0 and step.tokens == 1 + step.nodes


def test_a_steep_curve_drafts_nothing():
    # a node is worth less than one token (p < 1) and costs as much as a whole forward: never pays
    step = StepPlanner(cost=STEEP, probe_interval=0).plan(DRAFTS, cached=100)
    assert step.nodes == 0 and step.drafts == () and step.extra is None
    assert step.expected == 1.0 and step.tokens == 1


def test_a_gentle_curve_drafts_only_the_likely_prefix():
    planner = StepPlanner(cost=GENTLE)
    for _ in range(30):  # context:4 drafts have been right all along, pool drafts wrong
        planner.record([Draft(tokens=(1, 2, 3, 4, 5, 6, 7, 8), source="context:4")], committed=[1, 2, 3, 4, 5, 6, 7, 8, 0])
        planner.record([Draft(tokens=(3, 4, 5), source="pool:text"), Draft(tokens=(3, 4), source="pool:window")],
                       committed=[6])
    step = planner.plan(DRAFTS, cached=100)
    assert [d.source for d in step.drafts] == ["context:4", "pool:text"]  # (1, 2) is shared with context's draft
    assert step.drafts[0].tokens == (1, 2, 3, 4, 5, 6, 7, 8)
    assert step.drafts[1].tokens == (1, 2)  # the pool's 9 after (1, 2) is not worth its cost
    assert "pool:window" not in {d.source for d in step.drafts}


def test_drafting_stops_when_drafts_keep_failing_and_resumes_when_evidence_fades():
    planner = StepPlanner(cost=GENTLE)
    draft = Draft(tokens=(5, 6, 7), source="lookup:2")
    # untried: a 2-token match's first token 0.25, then 0.5 and 0.5; at 10% of a forward per token the
    # rate (1 + 0.25 + 0.125 [+ 0.0625]) / (1.2 [1.3]) is best at two nodes
    assert planner.plan([draft], cached=10).nodes == 2
    for _ in range(20):
        planner.record([draft], committed=[9])  # the first token never matches
    assert planner.plan([draft], cached=10).nodes == 0
    for _ in range(200):
        planner.record([], committed=[9])  # steps without drafts: the old evidence fades
    assert planner.plan([draft], cached=10).nodes > 0


# A CPU whose 2-token forward costs 1.45 one-token forwards (float32 on a 2-core AVX2-only EPYC, measured
# in docs/benchmarks.md): a draft token must be accepted about half the time to pay.
STEEP_CPU = CostModel.from_points({1: 1.0, 2: 1.45, 3: 1.78, 4: 2.0, 8: 2.7, 16: 3.1, 32: 4.0, 64: 6.0})


def test_before_any_evidence_a_steep_cpu_drafts_only_long_context_matches():
    planner = StepPlanner(cost=STEEP_CPU, probe_interval=0)
    pool = [Draft(tokens=(1, 2, 3), source="pool:text"), Draft(tokens=(4, 5, 6), source="pool:window")]
    assert planner.plan(pool, cached=100).nodes == 0
    assert planner.plan([Draft(tokens=(1, 2, 3, 4), source="context:1")], cached=100).nodes == 0
    # a 4-token match's first token is worth 0.45 before evidence: 1.45 tokens for 1.45 forwards, no gain
    assert planner.plan([Draft(tokens=(1, 2, 3, 4), source="context:4")], cached=256).nodes == 0
    # a longer match (the prior's ceiling, 0.55) pays for one node; a second, at 0.5 x 0.55, does not
    long = planner.plan([Draft(tokens=(1, 2, 3, 4), source="context:6")], cached=256)
    assert long.nodes == 1 and long.expected == pytest.approx(1.55)


def test_a_source_that_copies_deep_keeps_its_long_drafts():
    planner = StepPlanner(cost=STEEP_CPU)
    copy = Draft(tokens=tuple(range(1, 13)), source="context:3")
    for _ in range(6):  # three steps of 3 accepted tokens: depths 1-3 right, 4 and on never tried
        planner.record([Draft(tokens=copy.tokens[:3], source="context:3")], committed=[1, 2, 3, 0])
    acceptance = planner.acceptance
    assert acceptance.probability("context:3", 3) > 0.8
    # an untried depth takes the depth before's estimate as its prior, not a fixed guess
    assert acceptance.probability("context:3", 7) == pytest.approx(acceptance.probability("context:3", 3))
    assert planner.plan([copy], cached=100).nodes == 12


def test_a_source_without_evidence_is_probed_one_token_at_most_once_per_interval():
    # on STEEP a draft token breaks even at acceptance 1.0; a 6-token match's prior (0.55) never pays by
    # rate but is within reach (at least half the break-even), so it is probed
    planner = StepPlanner(cost=STEEP, probe_interval=4)
    match = [Draft(tokens=(5, 6, 7), source="context:6")]
    first = planner.plan(match, cached=100)  # no evidence yet: its first token goes through, though it does not pay
    assert first.nodes == 1 and first.drafts == (Draft(tokens=(5,), source="context:6"),)
    planner.record(first.drafts, committed=[9])  # rejected: the source now has evidence
    assert [planner.plan(match, cached=100).nodes for _ in range(30)] == [0] * 30  # by rate, and no probe
    assert planner.acceptance.tried("context:6", 1) > 0.5
    planner.record([], committed=[9])
    for _ in range(30):  # the evidence fades below half a try, but the estimate is still out of reach
        planner.record([], committed=[9])
    assert planner.acceptance.tried("context:6", 1) < 0.5
    assert planner.acceptance.probability("context:6", 1) < 0.5
    assert planner.plan(match, cached=100).nodes == 0
    for _ in range(30):  # faded further, the estimate returns within reach
        planner.record([], committed=[9])
    assert planner.acceptance.probability("context:6", 1) >= 0.5
    assert planner.plan(match, cached=100).nodes == 1  # probed again
    assert planner.plan([Draft(tokens=(1,), source="context:7")], cached=100).nodes == 0  # within the interval
    # in a batch whose step size is one token, nothing is probed
    batch = _batch(2, STEEP)
    batch.budget = 1
    assert StepPlanner(cost=batch, probe_interval=4).plan(match, cached=100).nodes == 0
    with pytest.raises(ValueError, match="'probe_interval' must be >= 0: -1"):
        StepPlanner(cost=STEEP, probe_interval=-1)


def test_only_a_source_within_reach_of_paying_is_probed():
    # the acceptance at which one draft token breaks even: 1.0 on STEEP, 0.45 on STEEP_CPU
    weak, modest = [Draft(tokens=(5, 6), source="context:1")], [Draft(tokens=(5, 6), source="lookup:2")]
    assert AcceptanceModel().probability("context:1", 1) == pytest.approx(0.15)
    assert AcceptanceModel().probability("lookup:2", 1) == pytest.approx(0.25)
    # a 2-token match (0.25) is under half of 1.0 on STEEP but within half of 0.45 on STEEP_CPU; a
    # one-token match (0.15) is within reach of neither; neither pays by rate on either curve
    assert StepPlanner(cost=STEEP, probe_interval=4).plan(modest, cached=100).nodes == 0
    assert StepPlanner(cost=STEEP_CPU, probe_interval=4).plan(modest, cached=100).nodes == 1
    assert StepPlanner(cost=STEEP_CPU, probe_interval=4).plan(weak, cached=100).nodes == 0
    # probe_reach scales the bar: 0 probes whatever is untried, as before the bar existed
    assert StepPlanner(cost=STEEP, probe_interval=4, probe_reach=0.0).plan(weak, cached=100).nodes == 1
    assert StepPlanner(cost=STEEP_CPU, probe_interval=4, probe_reach=0.25).plan(weak, cached=100).nodes == 1
    # on a flat curve everything pays by rate and nothing needs a probe
    assert StepPlanner(cost=FLAT, probe_interval=4).plan(weak, cached=100).nodes == 2
    with pytest.raises(ValueError, match="probe_reach"):
        StepPlanner(cost=STEEP, probe_reach=-0.5)


class CountingCost:
    """A cost curve that records every prediction asked of it."""

    def __init__(self, curve: CostModel) -> None:
        self.curve, self.asked = curve, []

    def seconds(self, tokens: int, cached: int) -> float:
        self.asked.append((tokens, cached))
        return self.curve.seconds(tokens, cached)


@pytest.mark.parametrize("curve", [FLAT, GENTLE, STEEP], ids=["flat", "gentle", "steep"])
def test_one_plan_predicts_each_step_size_once(curve):
    # options share sizes, the probe asks for sizes 1 and 2, and the chosen step for its own size
    cost = CountingCost(curve)
    planner = StepPlanner(cost=cost, probe_interval=1, probe_reach=0.0)
    for _ in range(3):
        cost.asked.clear()
        step = planner.plan(DRAFTS, cached=100, extras=[Extra(tokens=4, value=0.5)])
        assert len(cost.asked) == len(set(cost.asked)) and {c for _, c in cost.asked} == {100}
        assert (step.tokens, 100) in cost.asked
        assert step.seconds == curve.seconds(step.tokens, 100)
        planner.record(step.drafts, committed=[9])


def test_drafted_steps_that_commit_less_than_expected_scale_every_drafts_gain_down():
    planner = StepPlanner(cost=STEEP_CPU, probe_interval=0)
    assert planner.calibration() == 1.0
    chosen = []
    for matched in range(6, 12):  # long context matches, each of a length with no evidence yet, all wrong
        step = planner.plan([Draft(tokens=(1, 2, 3, 4), source=f"context:{matched}")], cached=256)
        chosen.append(step.nodes)
        planner.record(step.drafts, committed=[9])
    # by its cell alone each would draft one token (0.55: 1.55 tokens for 1.45 forwards); after two
    # drafted steps that committed none of their 2 x 0.55 expected, none pays
    assert chosen == [1, 1, 0, 0, 0, 0]
    assert planner.acceptance.probability("context:11", 1) == pytest.approx(0.55)
    assert planner.realized == pytest.approx([0.0, (0.55 * 0.97 + 0.55) * 0.97 ** 4])
    assert planner.calibration() == pytest.approx(4.0 / (4.0 + planner.realized[1]))
    for _ in range(30):  # the evidence fades: long matches are tried again
        planner.record([], committed=[9])
    assert planner.plan([Draft(tokens=(1, 2, 3, 4), source="context:12")], cached=256).nodes == 1
    # steps that commit more than expected never scale a gain up: the cells learn that themselves
    for _ in range(40):
        step = planner.plan([Draft(tokens=(5, 6), source="context:8")], cached=256)
        planner.record(step.drafts, committed=[5, 6, 9])
    assert planner.realized[0] > planner.realized[1] and planner.calibration() == 1.0
    with pytest.raises(ValueError, match="'calibration_weight' must be > 0: 0"):
        StepPlanner(cost=STEEP, calibration_weight=0)


@pytest.mark.parametrize("field, value, allowed", [
    ("prior_mean", 1.5, "[0.0, 1.0]"), ("prior_mean", -0.1, "[0.0, 1.0]"), ("per_matched", float("nan"), "[0.0, 1.0]"),
    ("prior_ceiling", 2, "[0.0, 1.0]"), ("prior_deep", "0.5", "[0.0, 1.0]"), ("prior_weight", 0.0, "(0.0, inf)"),
    ("prior_weight", float("inf"), "(0.0, inf)"), ("optimism", -1.0, "[0.0, inf)"), ("decay", 0.0, "(0.0, 1.0]"),
    ("decay", 1.01, "(0.0, 1.0]"), ("max_depth", 0, "integer >= 1"), ("max_depth", 2.0, "integer >= 1"),
    ("max_depth", True, "integer >= 1"),
])
def test_an_acceptance_model_refuses_a_field_out_of_range(field, value, allowed):
    with pytest.raises(ValueError) as caught:
        AcceptanceModel(**{field: value})
    message = str(caught.value)
    assert message.startswith(f"AcceptanceModel: {field}={value!r} is not allowed") and allowed in message


def test_the_bounds_are_allowed_and_a_negative_node_budget_is_not():
    model = AcceptanceModel(prior_mean=0.0, per_matched=1.0, prior_ceiling=1.0, prior_deep=0.0, decay=1.0, max_depth=1)
    assert model.probability("context:3", 1) == pytest.approx(1.0)  # prior 0.0 + 2 x 1.0, capped at the ceiling
    with pytest.raises(ValueError, match=r"StepPlanner: max_nodes=-1 is not allowed; it must be an integer >= 0"):
        StepPlanner(cost=STEEP, max_nodes=-1)


def test_drafts_that_share_a_node_are_not_counted_as_independent_evidence():
    acceptance = AcceptanceModel()
    drafts = [Draft(tokens=(7, k), source="pool:text") for k in range(1, 13)]  # 12 n-grams after the same token
    nodes = _Nodes.build(drafts, acceptance)
    first = nodes.paths[0][0]
    assert all(path[0] == first for path in nodes.paths)
    assert nodes.probs[first] == pytest.approx(acceptance.probability("pool:text", 1))  # not 1 - (1 - p)^12


def test_an_extra_block_is_carried_when_its_worth_pays_for_its_tokens():
    window = Extra(tokens=8, value=0.5, label="w8")
    assert StepPlanner(cost=FLAT).plan([], cached=10, extras=[window]).extra is window
    assert StepPlanner(cost=STEEP).plan([], cached=10, extras=[window]).extra is None
    # at 1.5 one-token forwards for 9 tokens, 1.5 tokens' worth breaks even; 0.5 does not
    stepped = CostModel.from_points({1: 1.0, 2: 1.5, 64: 1.5})
    assert StepPlanner(cost=stepped).plan([], cached=10, extras=[window]).extra is None
    assert StepPlanner(cost=stepped).plan([], cached=10, extras=[Extra(tokens=8, value=0.6)]).extra is not None


def test_node_probabilities_are_consistent_and_the_chosen_nodes_prefix_closed():
    acceptance = AcceptanceModel(prior_mean=0.9, optimism=0.0)
    drafts = [Draft(tokens=(1, 2), source="a"), Draft(tokens=(3, 4), source="b"), Draft(tokens=(5,), source="c"),
              Draft(tokens=(1, 7), source="d")]
    nodes = _Nodes.build(drafts, acceptance)
    children = {}
    for node, parent in enumerate(nodes.parents):
        children.setdefault(parent, []).append(node)
        if parent >= 0:
            assert nodes.probs[node] <= nodes.probs[parent] + 1e-12
    for parent, kids in children.items():
        assert sum(nodes.probs[k] for k in kids) <= (1.0 if parent < 0 else nodes.probs[parent]) + 1e-9
    order = nodes.ranked()
    for k in range(len(order) + 1):
        chosen = set(order[:k])
        assert all(nodes.parents[n] in chosen or nodes.parents[n] < 0 for n in chosen)


@pytest.mark.parametrize("draft, committed, matched", [
    ((1, 2, 3), [1, 2, 9], 2), ((1, 2, 3), [1, 2, 3, 4], 3), ((1,), [2], 0), ((), [5], 0),
])
def test_matched_length(draft, committed, matched):
    assert matched_length(draft, committed) == matched


def test_acceptance_counts_depths_tried_and_accepted():
    model = AcceptanceModel(optimism=0.0, prior_weight=0.0001)
    model.record(Draft(tokens=(1, 2, 3, 4), source="s"), matched=2)  # depths 1, 2 accepted, 3 tried and rejected
    assert model.counts == {("s", 1): [1.0, 1.0], ("s", 2): [1.0, 1.0], ("s", 3): [0.0, 1.0]}
    assert model.probability("s", 1) == pytest.approx(1.0, abs=1e-3)
    assert model.probability("s", 3) == pytest.approx(0.0, abs=1e-3)


# -- a batch: one step size for every row ------------------------------------------------------------

def _batch(rows: int, curve) -> "PackedCost":
    return PackedCost(target=None, model=curve, rows=rows)


def test_the_batch_bounds_each_rows_step_at_the_size_that_pays_for_the_whole_batch():
    # one row has a long draft it trusts; three have nothing. Alone that row would put its 8 nodes through
    # on a gentle curve, but in a batch of 4 every other row pays for its padding: the batch keeps it short.
    sure = StepPlanner(cost=_batch(4, GENTLE))
    for _ in range(30):
        sure.record([Draft(tokens=(1, 2, 3, 4, 5, 6, 7, 8), source="context:4")], committed=[1, 2, 3, 4, 5, 6, 7, 8, 0])
    batch = sure.cost
    alone = StepPlanner(cost=GENTLE, acceptance=sure.acceptance).plan(DRAFTS[:1], cached=100)
    assert alone.tokens == 9
    empty = [StepPlanner(cost=batch) for _ in range(3)]

    def step() -> list[int]:
        sizes = [sure.plan(DRAFTS[:1], cached=100).tokens] + [p.plan([], cached=100).tokens for p in empty]
        batch.settle(cached=100)
        return sizes

    first = step()  # no offers yet: each row plans for itself at the packed cost (8 nodes weigh as 32)
    assert batch.budget is not None and 1 <= batch.budget < 9
    # the bound maximises the batch's rate: 3 rows' single tokens + the sure row's value, over rows x T tokens
    values = [1.0 + sum(sure.acceptance.path(DRAFTS[0])[: t - 1]) for t in range(1, 10)]
    rate = [(3 + values[t - 1]) / GENTLE.seconds(4 * t, 100) for t in range(1, 10)]
    assert batch.budget == 1 + max(range(9), key=lambda i: rate[i])
    held = batch.budget
    second = step()
    assert second[0] == held < first[0]  # the sure row's step is cut to the bound (its draft still pays up to it)
    assert first[1:] == second[1:] == [1, 1, 1]


def test_rows_that_all_draft_share_a_longer_step_than_one_row_that_drafts():
    def bound(drafting: int) -> int:
        batch = _batch(4, GENTLE)
        planners = [StepPlanner(cost=batch) for _ in range(4)]
        for planner in planners[:drafting]:
            for _ in range(30):
                planner.record([Draft(tokens=(1, 2, 3, 4), source="context:4")], committed=[1, 2, 3, 4, 0])
        for i, planner in enumerate(planners):
            planner.plan(DRAFTS[:1] if i < drafting else [], cached=100)
        batch.settle(cached=100)
        return batch.budget

    assert bound(4) > bound(1) >= 1
    assert bound(0) == 1  # rows with no drafts: a one-token step


def test_one_row_is_never_bounded():
    batch = _batch(1, GENTLE)
    planner = StepPlanner(cost=batch)
    assert planner.plan(DRAFTS, cached=100) == StepPlanner(cost=GENTLE).plan(DRAFTS, cached=100)
    batch.settle(cached=100)
    assert batch.budget is None and batch.offers == []


def test_a_rows_step_is_priced_over_the_whole_batchs_cache_and_every_rows_keys():
    # a 50-token row packed with a 700-token one: its queries span the 700 columns of the dense cache, and
    # the forward reads both rows' caches; alone, a row is priced at its own length
    curve = CostModel.from_points({1: 0.04, 16: 0.06}, reference_cached=256, per_cached=1e-5, per_cached_token=1e-6)
    batch = _batch(2, curve)
    batch.width = 700
    assert batch.seconds(3, 50) == pytest.approx(curve.seconds(6, 700) + 700 * 1e-5)
    assert batch.seconds(3, 800) == pytest.approx(curve.seconds(6, 800) + 800 * 1e-5)  # never below the row's own
    alone = _batch(1, curve)
    alone.width = 700
    assert alone.seconds(3, 50) == curve.seconds(3, 50)
    # the observations reach the curve with their rows: a packed forward as predicted corrects nothing
    batch.observe(6, 700, curve.seconds(6, 700, rows=2), rows=2)
    assert curve.observations == 1 and curve.seconds(6, 700, rows=2) == pytest.approx(curve.raw(6, 700, rows=2))


def test_best_values_are_the_most_each_step_size_can_commit():
    window = Extra(tokens=3, value=2.0)
    options = _options([0.0, 0.9, 1.5], [window])  # k = 0, 1, 2 nodes; or the window with them
    assert best_values(options) == [1.0, 1.9, 2.5, 3.0, 3.9, 4.5]


# -- a batch's prompts: grouped by length when padding would cost more than the extra forwards ------------

def _partitions(items):
    """Every partition of `items` into contiguous runs."""
    if not items:
        yield []
        return
    for i in range(1, len(items) + 1):
        for rest in _partitions(items[i:]):
            yield [items[:i], *rest]


def test_without_a_cost_or_with_equal_lengths_the_prompts_go_through_together():
    assert prefill_groups([5, 700, 9]) == [[0, 1, 2]]
    assert prefill_groups([40, 40, 40], lambda tokens: GENTLE.seconds(tokens, 0)) == [[0, 1, 2]]
    assert prefill_groups([3], lambda tokens: GENTLE.seconds(tokens, 0)) == [[0]]


def test_a_cost_of_tokens_alone_groups_equal_lengths_and_a_cost_of_forwards_alone_keeps_one_group():
    assert prefill_groups([7, 300, 7, 300, 20], lambda tokens: float(tokens)) == [[1, 3], [4], [0, 2]]
    assert prefill_groups([7, 300, 7, 300, 20], lambda tokens: 1.0) == [[0, 1, 2, 3, 4]]


@given(lengths=st.lists(st.integers(1, 400), min_size=1, max_size=7),
       base=st.floats(0.0, 5.0), per_token=st.floats(0.001, 1.0))
def test_the_groups_are_the_cheapest_partition_of_the_rows_sorted_by_length(lengths, base, per_token):
    seconds = lambda tokens: base + per_token * tokens  # noqa: E731
    groups = prefill_groups(lengths, seconds)
    assert sorted(b for g in groups for b in g) == list(range(len(lengths)))  # every row once
    cost = sum(seconds(len(g) * max(lengths[b] for b in g)) for g in groups)
    order = sorted(range(len(lengths)), key=lambda b: (-lengths[b], b))
    best = min(sum(seconds(len(run) * lengths[run[0]]) for run in parts) for parts in _partitions(order))
    assert cost <= best * (1 + 1e-9)
    if len(set(lengths)) > 1:
        padded = seconds(len(lengths) * max(lengths))
        assert cost <= padded * (1 + 1e-9)  # never worse than padding every prompt to the longest
