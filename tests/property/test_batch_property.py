"""Property: every row of a left-padded batch equals HF greedy decoding of that row alone (float64 tiny models).

Each example draws a tiny model (Llama, Qwen2 with grouped-query attention, GPT-2 with learned
positions), a batch of 1-6 prompts of different lengths left-padded to the longest (the padding
filled with the pad id or with arbitrary tokens, which the mask must hide), an eos choice (the
model's, none, or a token some row really emits, so rows stop at different steps and leave the
packed forward mid-decode) and max_new_tokens; then one exact strategy: greedy, lookahead planned
(with the tiny models' frozen cost, a flat one or a steep one) or fixed, Jacobi, speculative with a
truncated draft, the prompt-lookup plugin, or a strategy of the pre-batching contract (it overrides
`step`, so the loop runs its rows one by one).

The reference of each row is HF's `model.generate(do_sample=False)` on that row alone, without
padding: one eos-free run, cut after its first eos (what greedy decoding with that eos emits). The
batch's layout must be model.generate's: each row as given (its left padding kept), its new tokens,
then the pad id up to the longest row; HF's own padded batch must give the same tensor (with sdpa
attention: HF's eager attention turns a float64 left-padded batch into NaNs, see the test).
At least 200 examples under the ci profile.

A second property adds stop strings (pieces of the rows' own continuations, spelt by a tiny tokenizer),
with eos (a stopped row is padded) and without (a row that met one decodes on until every row has):
every strategy's batch equals model.generate's on the same padded batch. 150 examples under ci.
"""

from __future__ import annotations

import functools

import attrs
import pytest
import torch
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import decodekit
from decodekit.core.costmodel import CostModel
from decodekit.plugins.manager import get_registry
from decodekit.strategies.speculative import truncated_draft
from decodekit.testing import strategies as dks
from decodekit.testing.exactness import first_difference
from tests.helpers import RowByRow, tiny_tokenizer

EXAMPLES = 200 if settings.get_current_profile_name() == "ci" else 30
STOP_EXAMPLES = 150 if settings.get_current_profile_name() == "ci" else 20
PAD, EOS = 0, 2  # the tiny models' pad and eos ids

MODELS = dks.tiny_model_configs(architectures=("llama", "qwen2", "gpt2"), seeds=(0, 1), inits=(0.3, 1.0),
                                attns=("sdpa", "eager"), vocab_sizes=(dks.VOCAB_SIZE, dks.SMALL_VOCAB_SIZE))

COSTS = {
    "tiny": None,  # the tiny models' own frozen TINY_MODEL_COST
    "flat": CostModel.flat(1.0).frozen(),  # every draft pays: wide windows, whole trees
    "steep": CostModel.linear(1.0, 1.0).frozen(),  # nothing pays: (almost) only the pending token
}


@pytest.fixture(scope="module", autouse=True)
def row_by_row():
    """RowByRow registered for this module (a module fixture: Hypothesis refuses function-scoped ones)."""
    registry = get_registry()
    registry.current_plugin = "test"
    try:
        registry.register(RowByRow)
    finally:
        registry.current_plugin = None
    assert not RowByRow.batched() and get_registry().get("greedy").cls.batched()
    yield
    registry.strategies.pop(RowByRow.name, None)


@functools.lru_cache(maxsize=None)
def first_layer_draft(config: dks.TinyModelConfig):
    return truncated_draft(config.build(), layers=1)


STRATEGIES = st.one_of(
    st.just(("greedy", {})),
    st.sampled_from(sorted(COSTS)).map(lambda cost: ("lookahead", {"cost": cost})),  # planned: no W/N/G
    st.fixed_dictionaries({"W": st.integers(1, 4), "N": st.integers(2, 4), "G": st.integers(1, 4)})
    .map(lambda p: ("lookahead", p)),
    st.just(("lookahead", {"W": 3, "N": 3, "G": 3})),
    st.fixed_dictionaries({"block_size": st.integers(1, 6), "max_iterations": st.integers(1, 6)})
    .map(lambda p: ("jacobi", p)),
    st.fixed_dictionaries({"gamma": st.integers(1, 5), "adaptive": st.booleans(),
                           "draft": st.sampled_from(["first-layer", "itself"])}).map(lambda p: ("speculative", p)),
    st.fixed_dictionaries({"max_ngram": st.integers(2, 4), "min_ngram": st.integers(1, 2),
                           "num_pred_tokens": st.integers(1, 10), "plan": st.booleans()})
    .map(lambda p: ("prompt-lookup", p)),
    st.just((RowByRow.name, {})),
)


@st.composite
def batches(draw, rows=st.integers(1, 6), max_new_tokens=st.one_of(st.integers(1, 4), st.integers(8, 24))):
    config = draw(MODELS)
    rows = draw(rows)
    prompts = [draw(dks.prompts(config.vocab_size, max_size=16)) for _ in range(rows)]
    width = max(len(p) for p in prompts)
    # what sits under the left padding: the pad id, or any token (the mask must hide it either way)
    filler = draw(st.sampled_from(["pad", "tokens"]))
    pads = [[PAD] * (width - len(p)) if filler == "pad" else
            draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=width - len(p), max_size=width - len(p)))
            for p in prompts]
    ids = torch.tensor([pad + p for pad, p in zip(pads, prompts)])  # (B, L)
    mask = torch.tensor([[0] * len(pad) + [1] * len(p) for pad, p in zip(pads, prompts)])  # (B, L)
    # eos: the model's (2), none, or the token row (i % B) emits at new position (i // B): a mid-decode stop
    eos = draw(st.one_of(st.just("model"), st.just("none"), st.integers(0, 200)))
    strategy, params = draw(STRATEGIES)
    return dict(config=config, prompts=prompts, ids=ids, mask=mask, eos=eos, strategy=strategy, params=params,
                max_new_tokens=draw(max_new_tokens))


def strategy_params(case) -> dict:
    """The drawn parameters as generate() keywords: the cost model and the draft model resolved."""
    params = dict(case["params"])
    if "cost" in params:
        cost = COSTS[params.pop("cost")]
        if cost is not None:  # None: the tiny models' own cost
            params["cost_model"] = cost
    if "draft" in params:  # speculative: the target's first layer (some drafts accepted) or itself (all)
        draft = params.pop("draft")
        params["draft_model"] = first_layer_draft(case["config"]) if draft == "first-layer" else case["config"].build()
    return params


def hf_generate(model, ids, mask, max_new_tokens, eos):
    """model.generate(do_sample=False); eos an id list, [] for none (the generation config's eos is then cleared)."""
    config = model.generation_config
    kept = config.eos_token_id
    config.eos_token_id = eos or None
    try:
        with torch.inference_mode():
            return model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=PAD, eos_token_id=eos or None)
    finally:
        config.eos_token_id = kept


def cut_after_eos(tokens: list[int], eos: list[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=batches())
def test_every_row_of_a_batch_equals_hf_greedy_on_the_row_alone(case):
    model = case["config"].build()
    prompts, ids, mask, max_new = case["prompts"], case["ids"], case["mask"], case["max_new_tokens"]
    rows, width = len(prompts), ids.shape[1]
    # each row alone, unpadded, no eos: HF greedy's continuation
    free = [hf_generate(model, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), max_new, [])[0, len(p):]
            .tolist() for p in prompts]
    if case["eos"] == "model":
        eos, kwargs = [EOS], {}  # decodekit reads the model's generation config
    elif case["eos"] == "none":
        eos, kwargs = [], {"eos_token_id": []}
    else:
        row = free[case["eos"] % rows]
        eos = [row[(case["eos"] // rows) % len(row)]]
        kwargs = {"eos_token_id": eos}
    expected = [cut_after_eos(f, eos) for f in free]  # HF greedy with that eos, each row alone
    note(f"{case['config']}; eos {eos}; row references {expected}")

    out = decodekit.generate(model, ids, case["strategy"], attention_mask=mask, max_new_tokens=max_new, **kwargs,
                             **strategy_params(case))
    label = f"{case['strategy']}({case['params']})"

    got = out.sequences
    longest = max(len(e) for e in expected)
    assert tuple(got.shape) == (rows, width + longest), f"{label}: shape {tuple(got.shape)}"
    assert torch.equal(got[:, :width], ids), f"{label}: the prompts (and their left padding) were not kept as given"
    for b, want in enumerate(expected):
        new = got[b, width:].tolist()
        row, fill = new[: len(want)], new[len(want):]
        assert row == want, (f"{label}: row {b} of {rows} differs from HF greedy on the row alone at new token "
                             f"{first_difference(row, want)}: {row} vs {want}")
        assert fill == [PAD] * (longest - len(want)), f"{label}: row {b} stopped early but is filled with {fill}"
    assert out.stats.new_tokens == sum(len(e) for e in expected)

    # HF's own padded batch: the same tensor (in float64 its batched rows equal the single-row ones). Not with
    # eager attention: there HF's float64 forward gives a padding query no key to see, its softmax NaNs, and
    # the NaN reaches the row's real tokens (argmax 0); decodekit's padding queries see themselves.
    if case["config"].attn == "eager" and bool((mask == 0).any()):
        return
    hf = hf_generate(model, ids, mask, max_new, eos)
    assert torch.equal(got, hf), f"{label}: differs from model.generate on the padded batch: {got.tolist()} vs {hf.tolist()}"


# -- stop strings ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def tokenizer_for(vocab_size: int):
    return tiny_tokenizer(vocab_size)


@st.composite
def stop_batches(draw):
    case = draw(batches(rows=st.integers(2, 6), max_new_tokens=st.integers(8, 24)))
    # sdpa only: the reference is HF's padded batch (its eager float64 forward NaNs on left padding)
    case["config"] = attrs.evolve(case["config"], attn="sdpa")
    case["eos"] = draw(st.sampled_from(["none", "none", "none", "model"]))  # mostly none: rows then run together
    # each stop string: a piece (row, first character, length) of a row's own stop-free continuation
    case["stops"] = draw(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 0.7), st.integers(2, 5)),
                                  min_size=1, max_size=2))
    return case


@settings(max_examples=STOP_EXAMPLES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=stop_batches())
def test_stop_strings_in_a_batch_equal_model_generate_on_the_padded_batch(case):
    model = case["config"].build()
    tokenizer = tokenizer_for(case["config"].vocab_size)
    ids, mask, max_new = case["ids"], case["mask"], case["max_new_tokens"]
    width = ids.shape[1]
    free = hf_generate(model, ids, mask, max_new, [])
    texts = [tokenizer.decode(row[width:]) for row in free]
    pieces = [(texts[r % len(texts)], at, size) for r, at, size in case["stops"]]
    stops = sorted({text[int(at * len(text)):][:size] for text, at, size in pieces} - {""})
    if not stops:
        stops = ["a"]
    eos = [EOS] if case["eos"] == "model" else []
    config = model.generation_config
    kept, config.eos_token_id = config.eos_token_id, eos or None
    try:
        with torch.inference_mode():
            expected = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, pad_token_id=PAD,
                                      eos_token_id=eos or None, stop_strings=stops, tokenizer=tokenizer)
    finally:
        config.eos_token_id = kept
    note(f"{case['config']}; eos {eos}; stop strings {stops}; continuations {texts}; expected {expected.tolist()}")
    out = decodekit.generate(model, ids, case["strategy"], attention_mask=mask, max_new_tokens=max_new,
                             eos_token_id=eos or None, stop_strings=stops, tokenizer=tokenizer, **strategy_params(case))
    event(f"eos {bool(eos)}: " + ("a stop fell inside a multi-token step" if out.stats.cut_tokens else "no stop inside a step"))
    event(f"eos {bool(eos)}: " + ("the batch stopped before max_new_tokens" if expected.shape[1] - width < max_new
                                  else "the batch ran to max_new_tokens"))
    assert torch.equal(out.sequences, expected), (f"{case['strategy']}({case['params']}) with stop strings {stops}: "
                                                  f"{out.sequences.tolist()} vs model.generate {expected.tolist()}")
