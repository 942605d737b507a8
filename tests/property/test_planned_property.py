"""Property: planned steps (lookahead without W/N/G, the prompt-lookup plugin) equal greedy decoding.

The planner only changes what a step puts through, never what verification accepts, so the output
must be greedy's whatever it chooses. To drive every branch of it, each example injects a synthetic
cost model: flat (everything pays: wide windows, whole trees), linear with a random slope (from
"drafts pay" to "nothing pays"), step-shaped (cheap up to a random width, then dear), and one whose
curve changes during the decode (flat, then steep, then flat ...). At least 300 examples under the ci
profile, float64 tiny Llama, Qwen2 (grouped-query attention) and GPT-2 models, with and without eos.
"""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decodekit
from decodekit.core.costmodel import CostModel
from decodekit.testing import strategies as dks
from decodekit.testing.exactness import check_case
from decodekit.testing.strategies import GenerationCase

EXAMPLES = 300 if settings.get_current_profile_name() == "ci" else 40

MODELS = dks.tiny_model_configs(architectures=("llama", "qwen2", "gpt2"), seeds=(0, 1), inits=(0.3, 1.0),
                                attns=("sdpa", "eager"), vocab_sizes=(dks.VOCAB_SIZE, dks.SMALL_VOCAB_SIZE))


class ChangingCost:
    """A machine whose cost curve changes during the decode: flat for `every` plans, then steep, and so on."""

    def __init__(self, every: int, slope: float) -> None:
        self.every, self.slope, self.calls = every, slope, 0

    def seconds(self, tokens: int, cached: int) -> float:
        self.calls += 1
        steep = (self.calls // self.every) % 2
        return 1.0 + steep * self.slope * (tokens - 1)

    def __repr__(self) -> str:
        return f"ChangingCost(every={self.every}, slope={self.slope})"


COSTS = st.one_of(
    st.just(CostModel.flat(1.0).frozen()),
    st.floats(0.0, 1.5).map(lambda slope: CostModel.linear(1.0, slope).frozen()),
    st.integers(2, 40).map(lambda width: CostModel.from_points({1: 1.0, width: 1.05, width + 1: 3.0, 128: 4.0}).frozen()),
    st.builds(ChangingCost, every=st.integers(1, 400), slope=st.floats(0.2, 2.0)),
)


@st.composite
def cases(draw):
    config = draw(MODELS)
    strategy = draw(st.sampled_from(["lookahead", "prompt-lookup"]))
    if strategy == "lookahead":
        params = draw(st.fixed_dictionaries({}, optional={"C": st.integers(0, 4), "L": st.integers(1, 16),
                                                          "pool_from_prompt": st.booleans()}))
    else:
        params = draw(st.fixed_dictionaries({}, optional={"max_ngram": st.integers(2, 4),
                                                          "num_pred_tokens": st.integers(1, 24)}))
    return dict(config=config, strategy=strategy, params=params, cost=draw(COSTS),
                prompt=draw(dks.prompts(config.vocab_size, max_size=32)), eos=draw(dks.eos_choices(config.vocab_size)),
                max_new_tokens=draw(st.one_of(st.integers(1, 64), st.integers(24, 64))))


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_planned_steps_equal_greedy(case):
    drawn = GenerationCase(model=case["config"], prompt=tuple(case["prompt"]), eos=case["eos"],
                           max_new_tokens=case["max_new_tokens"])
    comparison = check_case(case["strategy"], {**case["params"], "cost_model": case["cost"]}, drawn)
    assert comparison.identical, f"{comparison.describe()} on {case['config']}"


def _run(model, ids, cost, **params):
    return decodekit.generate(model, ids, "lookahead", max_new_tokens=48, eos_token_id=[], cost_model=cost, **params)


def test_the_planner_adapts_the_step_to_the_curve():
    """On one repetitive prompt: a flat curve runs the widest window and verifies whole trees, a steep one
    puts (almost) nothing but the pending token through; the output is greedy's either way."""
    model = dks.TinyModelConfig(arch="llama", seed=1, init=1.0).build()
    ids = torch.tensor([[1, 5, 7, 9, 5, 7, 9, 5, 7, 9, 3, 4, 5, 7]])
    greedy = decodekit.generate(model, ids, max_new_tokens=48, eos_token_id=[])
    flat = _run(model, ids, CostModel.flat(1.0).frozen())
    steep = _run(model, ids, CostModel.linear(1.0, 1.0).frozen())
    assert flat.sequences.tolist() == steep.sequences.tolist() == greedy.sequences.tolist()
    # every step after the prefill but the last (with one token left there is nothing to guess ahead)
    assert flat.stats.details["window_steps"] >= flat.stats.steps - 2
    assert flat.stats.details["window_columns"] == 16 * flat.stats.details["window_steps"]
    assert flat.stats.tokens_per_forward_step > 40
    assert steep.stats.details["window_steps"] == 0
    assert steep.stats.tokens_per_forward_step < 1.5
