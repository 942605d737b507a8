"""Batching's parts: the ragged cache against a naive reference, the packed mask, the loop's checks, stop strings.

- RowsCache (the cache of rows decoded together) against a list of cached ids per row, through random
  append / keep / rollback / select sequences (a RuleBasedStateMachine, as test_kvcache does for one row).
- packed_mask / packed_positions: each row's part is the one-row mask (additive_mask) over its own
  cached columns; a padding query sees itself only; a float64 forward over it stays finite and gives each row
  its forward alone (to 1e-10 with sdpa; eager takes its softmax in float32).
- The registry refuses a strategy that implements neither propose/verify nor step; the loop refuses a
  verdict that keeps the wrong positions.
- Stop strings in a left-padded batch, with and without eos: every strategy equals model.generate on
  the same padded batch (a tiny tokenizer over the tiny models' vocabulary spells the tokens).
"""

from __future__ import annotations

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import decodekit
from decodekit.core.backend import GROUPED_SDPA, HFBackend
from decodekit.core.costmodel import CostModel
from decodekit.core.kvcache import RowsCache
from decodekit.core.masks import additive_mask, causal_layout, packed_mask, packed_positions, position_ids, tree_layout
from decodekit.errors import InputError, PluginError
from decodekit.strategies.speculative import truncated_draft
from decodekit.testing import tiny_model
from tests.helpers import RowByRow, tiny_tokenizer

LAYERS, HEADS, DIM = 2, 2, 3
LAYER_TAG = 10**6  # a cached id in layer l is stored as id + l * LAYER_TAG (so layers cannot be confused)


def backend() -> HFBackend:
    return HFBackend.for_model(tiny_model("llama"))


# -- RowsCache against a naive reference -----------------------------------------------------------

def append(rows: RowsCache, ids: list[list[int]]) -> None:
    """Append T columns to every row (as a packed forward does): row b's keys/values encode ids[b]."""
    for layer in range(LAYERS):
        base = torch.tensor(ids, dtype=torch.float64)[:, None, :, None]  # (B, 1, T, 1)
        keys = (base + LAYER_TAG * layer).expand(len(ids), HEADS, len(ids[0]), DIM).contiguous()  # (B, H, T, D)
        rows.cache.update(keys, -keys, layer)


def cached_ids(rows: RowsCache, b: int) -> list[list[int]]:
    """Row b's first lengths[b] cached ids, per layer (checking that values mirror keys)."""
    out = []
    for index, layer in enumerate(rows.cache.layers):
        keys = layer.keys[b, :, : rows.lengths[b]]  # (H, n, D)
        assert torch.equal(layer.values[b, :, : rows.lengths[b]], -keys)
        assert bool((keys == keys[:1, :, :1]).all()), "heads or head dims disagree"
        out.append([int(x) - LAYER_TAG * index for x in keys[0, :, 0].tolist()])
    return out


class RowsCacheMachine(RuleBasedStateMachine):
    """B rows; reference[b] is the list of ids row b has cached. A packed forward appends the same number
    of columns to every row; `keep` then keeps a subset of each row's appended columns, after its own."""

    def __init__(self):
        super().__init__()
        self.rows: RowsCache | None = None
        self.reference: list[list[int]] = []
        self.appended: list[list[int]] | None = None  # each row's ids in the columns of the latest append
        self.start = 0  # the width before the latest append
        self.next_id = 1

    @precondition(lambda self: self.rows is None)
    @rule(count=st.integers(1, 5))
    def start_batch(self, count):
        self.rows = RowsCache(backend(), lengths=[0] * count)
        self.reference = [[] for _ in range(count)]

    @precondition(lambda self: self.rows is not None and self.reference and self.appended is None)
    @rule(size=st.integers(1, 6))
    def forward(self, size):
        self.start = self.rows.width
        ids = [list(range(self.next_id + b * size, self.next_id + (b + 1) * size)) for b in range(len(self.reference))]
        self.next_id += size * len(self.reference)
        append(self.rows, ids)
        self.appended = ids

    @precondition(lambda self: self.appended is not None)
    @rule(data=st.data())
    def keep(self, data):
        size = len(self.appended[0])
        keeps = [sorted(data.draw(st.sets(st.integers(0, size - 1)), label=f"keep row {b}"))
                 for b in range(len(self.reference))]
        self.rows.keep(self.start, keeps)
        for b, keep in enumerate(keeps):
            self.reference[b] += [self.appended[b][k] for k in keep]
        self.appended = None

    @precondition(lambda self: self.appended is None and any(self.reference))
    @rule(data=st.data())
    def rollback(self, data):
        b = data.draw(st.sampled_from([b for b, ids in enumerate(self.reference) if ids]), label="row")
        length = data.draw(st.integers(0, len(self.reference[b])), label="length")
        self.rows.rollback(b, length)
        self.reference[b] = self.reference[b][:length]

    @precondition(lambda self: self.appended is None and self.reference)
    @rule(data=st.data())
    def select(self, data):
        chosen = data.draw(st.lists(st.sampled_from(range(len(self.reference))), min_size=1, unique=True),
                           label="rows")  # a non-empty subset, in any order
        self.rows.select(chosen)
        self.reference = [self.reference[b] for b in chosen]

    @precondition(lambda self: self.appended is None and self.reference)
    @rule(data=st.data())
    def stack(self, data):
        """Rebuild the batch as a grouped prefill does: each part caches its rows' ids in a cache of its own
        (padded to its longest row, then kept), and the parts are stacked in the batch's row order."""
        order = data.draw(st.permutations(range(len(self.reference))), label="rows in part order")
        cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=len(order) - 1), label="cuts"))
        groups = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)]) if order[a:b]]
        parts = []
        for group in groups:
            part = RowsCache(backend(), lengths=[0] * len(group))
            width = max(1, *(len(self.reference[b]) for b in group))
            junk = -1 - self.next_id  # columns past a row's length hold ids no row has cached
            append(part, [self.reference[b] + [junk] * (width - len(self.reference[b])) for b in group])
            part.keep(0, [range(len(self.reference[b])) for b in group])
            parts.append((group, part))
        self.rows.stack(parts)

    @invariant()
    def matches_reference(self):
        if self.rows is None:
            return
        assert self.rows.lengths == [len(ids) for ids in self.reference]
        if self.appended is None:  # the cache holds the longest row's committed columns, nothing more
            assert self.rows.width == max(len(ids) for ids in self.reference)
        for b, ids in enumerate(self.reference):
            assert self.rows.row(b).length == len(ids)
            if ids:
                assert cached_ids(self.rows, b) == [ids] * LAYERS, f"row {b}"


TestRowsCacheMachine = RowsCacheMachine.TestCase
TestRowsCacheMachine.settings = settings(stateful_step_count=30)


def test_select_of_no_rows_empties_the_cache():
    rows = RowsCache(backend(), lengths=[0, 0])
    append(rows, [[1, 2], [3, 4]])
    rows.keep(0, [[0, 1], [0]])
    rows.select([])
    assert rows.lengths == [] and rows.width == 0


@pytest.mark.parametrize("keeps, message", [([[1, 0], [0]], "row 0: keep offsets must be increasing"),
                                            ([[0], [0, 3]], r"row 1: keep offsets must be increasing and in \[0, 3\)")])
def test_a_bad_keep_is_refused(keeps, message):
    rows = RowsCache(backend(), lengths=[0, 0])
    append(rows, [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match=message):
        rows.keep(0, keeps)


def test_rollback_past_a_rows_length_is_refused():
    rows = RowsCache(backend(), lengths=[0, 0])
    append(rows, [[1, 2, 3], [4, 5, 6]])
    rows.keep(0, [[0, 1, 2], [0]])
    with pytest.raises(ValueError, match=r"rollback length for row 1 must be in \[0, 1\], got 2"):
        rows.rollback(1, 2)


# -- the packed mask and positions ---------------------------------------------------------------

@st.composite
def layouts(draw, max_size: int = 6):
    """A chain or a random tree (parents[i] < i)."""
    size = draw(st.integers(1, max_size))
    if draw(st.booleans()):
        return causal_layout(size)
    return tree_layout([-1] + [draw(st.integers(0, i - 1)) for i in range(1, size)])


@given(layout=layouts(), cached=st.integers(0, 9))
def test_the_packed_mask_of_one_row_is_the_one_row_mask(layout, cached):
    mask = packed_mask([layout], [cached], cached, torch.float32)  # (1, 1, T, S + T)
    assert torch.equal(mask, additive_mask(layout, cached, torch.float32))
    assert torch.equal(packed_positions([layout], [cached])[0], position_ids(layout, cached))


@given(data=st.data(), rows=st.integers(1, 5), extra=st.integers(0, 4))
def test_each_row_of_a_packed_mask_sees_its_own_cache_and_step_and_padding_sees_itself(data, rows, extra):
    steps = [data.draw(layouts(), label=f"layout {b}") for b in range(rows)]
    lengths = [data.draw(st.integers(0, 8), label=f"length {b}") for b in range(rows)]
    cached = max(lengths) + extra  # columns past a row's length: another row's, or rejected drafts
    size = max(layout.size for layout in steps)
    mask = packed_mask(steps, lengths, cached, torch.float64)  # (B, 1, T, S + T)
    positions = packed_positions(steps, lengths)  # (B, T)
    assert mask.shape == (rows, 1, size, cached + size) and positions.shape == (rows, size)
    low = torch.finfo(torch.float64).min
    for b, (layout, length) in enumerate(zip(steps, lengths)):
        t = layout.size
        own = additive_mask(layout, length, torch.float64)[0, 0]  # (t, length + t): the row alone
        expected = torch.full((size, cached + size), low, dtype=torch.float64)  # (T, S + T)
        expected[:t, :length] = own[:, :length]  # its committed tokens
        expected[:t, cached: cached + t] = own[:, length:]  # its step's structure
        for i in range(t, size):
            expected[i, cached + i] = 0  # a padding query sees itself only
        assert torch.equal(mask[b, 0], expected), f"row {b}"
        assert torch.equal(positions[b, :t], position_ids(layout, length))
        assert bool((positions[b, t:] == length).all())


def packed_forward_and_alone(attn: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rows of different cached lengths and step sizes (a prefill, then one step) through one float64 forward
    each, with `attn` attention: the step's logits (B, T, V), and each row's step logits from its forward alone."""
    model = tiny_model("llama", seed=1, attn=attn)
    be = HFBackend.for_model(model)
    prompts, steps = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], [[20], [21, 22, 23, 24], [25, 26]]
    rows = RowsCache(be, lengths=[0] * 3)
    with torch.inference_mode():
        for proposals in (prompts, steps):  # the prefill, then one step
            chains = [causal_layout(len(p)) for p in proposals]
            size = max(len(p) for p in proposals)
            ids = torch.tensor([p + [p[0]] * (size - len(p)) for p in proposals])  # (B, T)
            mask = packed_mask(chains, rows.lengths, rows.width, be.dtype)  # (B, 1, T, S + T)
            logits = be.forward_rows(ids, packed_positions(chains, rows.lengths), rows.cache, mask)  # (B, T, V)
            assert bool(torch.isfinite(logits).all())
            rows.keep(rows.width - size, [range(len(p)) for p in proposals])
        alone = [model(torch.tensor([p + s])).logits[0, len(p):] for p, s in zip(prompts, steps)]  # (t, V) each
    return logits, alone


@pytest.mark.parametrize("attn", ["sdpa", GROUPED_SDPA])
def test_each_row_of_a_float64_packed_forward_equals_its_own_forward(attn):
    """Each row's logits in a packed forward are its forward alone, to float64 rounding: the packed mask, the
    positions and the ragged cache change nothing a row computes."""
    logits, alone = packed_forward_and_alone(attn)
    for b, own in enumerate(alone):
        assert torch.allclose(logits[b, : len(own)], own, rtol=0, atol=1e-10), f"row {b}"


def test_an_eager_float64_packed_forward_stays_finite_and_each_row_matches_its_own_forward():
    """transformers' eager attention takes the softmax in float32 whatever the model's dtype, so the mask's
    float64 minimum becomes -inf there: a padding query that saw nothing would make NaN; none reaches any row.
    That float32 softmax also rounds a packed row (9 key columns) and the row alone (6) differently on some
    CPUs: about 1e-6 apart after two layers on an AVX2-only EPYC, 1e-15 with the softmax taken in float64.
    So eager rows are compared to float32 softmax precision here (1e-10 on the float64 sdpa forwards above);
    one cached column wrongly hidden from every query moves the rows' logits by 0.6 to 4.8."""
    logits, alone = packed_forward_and_alone("eager")
    for b, own in enumerate(alone):
        assert torch.allclose(logits[b, : len(own)], own, rtol=0, atol=1e-5), f"row {b}"


# -- what the registry and the loop refuse ---------------------------------------------------------

class Neither(decodekit.Decoder):
    name = "test-neither"
    capabilities = decodekit.Capabilities(exact=True)


class ProposeOnly(Neither):
    name = "test-propose-only"

    def propose(self, state):
        return decodekit.Proposal(tokens=[state.pending])


@pytest.mark.parametrize("cls", [Neither, ProposeOnly])
def test_the_registry_refuses_a_strategy_without_propose_and_verify_or_step(decodekit_register, cls):
    with pytest.raises(PluginError, match=rf"{cls.__qualname__} must implement propose and verify \(or, the "
                                          rf"pre-batching contract, step\)"):
        decodekit_register(cls)
    assert cls.name not in decodekit.list_strategies()


def test_the_registry_takes_a_step_only_strategy_and_runs_it_row_by_row(decodekit_register):
    decodekit_register(RowByRow)
    assert not RowByRow.batched()
    model = tiny_model("llama", seed=1, init=1.0)
    ids, mask = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 7]]), torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    out = decodekit.generate(model, ids, RowByRow.name, attention_mask=mask, max_new_tokens=8, eos_token_id=[])
    greedy = decodekit.generate(model, ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[])
    assert torch.equal(out.sequences, greedy.sequences)


def bad_verdict(keep, tokens=1, proposed=2):
    """A batched strategy proposing `proposed` tokens and committing `tokens` of them with the given keep."""

    class Bad(decodekit.Decoder):
        name = "test-bad-verdict"
        capabilities = decodekit.Capabilities(exact=False)

        def propose(self, state):
            return decodekit.Proposal(tokens=[state.pending] * proposed)

        def verify(self, state, proposal, logits):
            return decodekit.Verdict(tokens=[int(logits[0].argmax())] * tokens, keep=keep)

    return Bad


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("keep, tokens", [([0, 1], 1), ([0], 2), ([1], 1), ([0, 2], 2), ([1, 0], 2)])
def test_a_verdict_that_keeps_the_wrong_positions_breaks_the_cache_invariant(decodekit_register, rows, keep, tokens):
    decodekit_register(bad_verdict(keep, tokens))
    ids = torch.tensor([[5, 6, 7]] * rows)
    with pytest.raises(RuntimeError, match=r"strategy 'test-bad-verdict' broke the cache invariant: "
                                           rf"{tokens} tokens committed, keeping proposed positions"):
        decodekit.generate(tiny_model("llama"), ids, "test-bad-verdict", max_new_tokens=6, eos_token_id=[])


def test_a_verdict_of_no_token_is_refused(decodekit_register):
    decodekit_register(bad_verdict([], tokens=0))
    with pytest.raises(RuntimeError, match="strategy 'test-bad-verdict' committed no token in a step"):
        decodekit.generate(tiny_model("llama"), torch.tensor([[5, 6], [7, 8]]), "test-bad-verdict",
                           max_new_tokens=6, eos_token_id=[])


def test_a_non_contiguous_verdict_is_kept():
    """The counterpart: keeping [0, 2] of 3 proposed tokens for 2 committed ones is allowed (a tree's path)."""
    from decodekit.core.decoder import Proposal, Verdict
    from decodekit.core.loop import check_verdict

    assert check_verdict(Neither(None), Proposal(tokens=[1, 2, 3]), Verdict(tokens=[4, 5], keep=[0, 2])) == [0, 2]


@pytest.mark.parametrize("mask", [[[0, 1, 0, 1]], [[1, 1, 1, 1], [0, 1, 1, 0]]])
def test_a_hole_in_a_row_is_refused(mask):
    ids = torch.full((len(mask), 4), 5)
    row = len(mask) - 1
    with pytest.raises(InputError, match=rf"attention_mask row {row} has padding after a token"):
        decodekit.generate(tiny_model("llama"), ids, attention_mask=torch.tensor(mask), max_new_tokens=2)


# -- stop strings in a padded batch -----------------------------------------------------------------

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 30]]
MAX_NEW = 20
STRATEGIES = [("greedy", {}), ("lookahead", {}), ("lookahead", {"W": 3, "N": 3, "G": 3}), ("jacobi", {"block_size": 4}),
              ("speculative", {"gamma": 3}), ("prompt-lookup", {"min_ngram": 1}), (RowByRow.name, {})]


def generate_without_eos(model, ids, **kwargs):
    """model.generate with no eos at all (the generation config's cleared for the call)."""
    config = model.generation_config
    kept, config.eos_token_id = config.eos_token_id, None
    try:
        with torch.inference_mode():
            return model.generate(ids, do_sample=False, pad_token_id=0, **kwargs)
    finally:
        config.eos_token_id = kept


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("eos", [None, 2], ids=["no-eos", "eos"])
def test_stop_strings_in_a_padded_batch_equal_model_generate(decodekit_register, tokenizer, arch, eos):
    """Without eos a row that meets a stop string decodes on until every row has (no pad fill); with eos a
    stopped row is padded. Either way every strategy's batch equals model.generate's on the padded batch."""
    decodekit_register(RowByRow)
    model = tiny_model(arch, seed=1, init=1.0)  # sdpa: HF's eager float64 forward NaNs on left padding
    width = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])  # (B, W)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])  # (B, W)
    free = generate_without_eos(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW)
    texts = [tokenizer.decode(row[width:]) for row in free]
    stops = [texts[0][6:8], texts[2][20:23]]  # rows meet them (or others' pieces) at different steps
    eos_kwargs = {"eos_token_id": eos}
    if eos is None:
        expected = generate_without_eos(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW, stop_strings=stops,
                                        tokenizer=tokenizer)
        alone = [generate_without_eos(model, torch.tensor([p]), max_new_tokens=MAX_NEW, stop_strings=stops,
                                      tokenizer=tokenizer).shape[1] - len(p) for p in PROMPTS]
        # the case is only interesting when rows stop at different steps, one before the batch does
        assert len(set(alone)) > 1 and min(alone) < expected.shape[1] - width < MAX_NEW, (alone, stops, texts)
    else:
        with torch.inference_mode():
            expected = model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                                      pad_token_id=0, eos_token_id=eos, stop_strings=stops, tokenizer=tokenizer)
        assert bool((expected[:, width:] == 0).any()), "no row stopped early"
    for name, params in STRATEGIES:
        params = dict(params)
        if name == "speculative":
            params["draft_model"] = truncated_draft(model, layers=1)
        with torch.inference_mode():
            out = decodekit.generate(model, ids, name, attention_mask=mask, max_new_tokens=MAX_NEW,
                                     stop_strings=stops, tokenizer=tokenizer, **eos_kwargs, **params)
        assert out.sequences.tolist() == expected.tolist(), f"{name}({params}) with stop strings {stops!r}"


def test_the_last_row_to_meet_a_stop_string_decodes_on_to_the_longest_rows_count(tokenizer):
    """Without eos, row 2 meets "ab" after 13 tokens, in the step where row 1, a multi-token step ahead,
    has reached max_new_tokens (14): every row has now stopped, the batch ends at 14 new tokens, and row
    2 still owes one (model.generate gives every row 14). A regression: the loop took row 2 as done."""
    model = tiny_model("qwen2", seed=1, init=0.3)
    ids, mask = torch.tensor([[0, 0, 4], [3, 3, 3], [0, 0, 3]]), torch.tensor([[0, 0, 1], [1, 1, 1], [0, 0, 1]])
    expected = generate_without_eos(model, ids, attention_mask=mask, max_new_tokens=14, stop_strings=["ab"],
                                    tokenizer=tokenizer)
    assert expected.shape[1] == 3 + 14 and int(expected[2, -1]) != 0
    out = decodekit.generate(model, ids, "lookahead", attention_mask=mask, max_new_tokens=14, eos_token_id=None,
                             stop_strings=["ab"], tokenizer=tokenizer, W=1, N=2, G=1)
    assert out.sequences.tolist() == expected.tolist()


# -- the cost of a packed step ------------------------------------------------------------------------

@attrs.define(eq=False, kw_only=True)
class RecordingCost(CostModel):
    """A cost model that notes every forward the loop reports: (tokens in all, cached columns, rows)."""

    seen: list = attrs.Factory(list)

    def observe(self, tokens: int, cached: int, seconds: float, rows: int = 1) -> None:
        self.seen.append((tokens, cached, rows))
        CostModel.observe(self, tokens, cached, seconds, rows)


def test_a_packed_step_is_observed_over_the_dense_caches_width_with_its_rows():
    """A 3-token prompt packed with a 40-token one: every packed forward spans the long row's columns, so the
    cost model hears of it at that width (at least 40), with 2 rows, and never at the rows' mean length."""
    model = tiny_model("llama", dtype=torch.float64)
    long, short = list(range(5, 45)), [7, 8, 9]
    ids = torch.tensor([long, [0] * 37 + short])  # (2, 40), left-padded
    mask = torch.tensor([[1] * 40, [0] * 37 + [1] * 3])  # (2, 40)
    cost = RecordingCost(points={1: 0.01, 16: 0.012}, per_cached=1e-5)
    decodekit.generate(model, ids, "lookahead", attention_mask=mask, max_new_tokens=12, eos_token_id=[],
                       cost_model=cost)
    packed = [(tokens, cached) for tokens, cached, rows in cost.seen if rows == 2]
    assert packed, cost.seen
    assert all(cached >= 40 and tokens % 2 == 0 for tokens, cached in packed), packed
