"""Property: lookahead decoding equals greedy decoding token for token (float64 tiny models).

Runs at least 300 examples under the ci profile (`make test`), across architectures with full and
grouped-query attention, random and repetitive prompts (so the n-gram pool really hits), W in
[1, 16], N in [2, 8], G in [0, 16], max_new_tokens in [1, 64], with and without an eos.
"""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decodekit
from decodekit.testing import strategies as dks
from decodekit.testing.exactness import first_difference

EXAMPLES = 300 if settings.get_current_profile_name() == "ci" else 40

MODELS = dks.tiny_model_configs(architectures=("llama", "qwen2", "gpt2", "mistral"), seeds=(0, 1),
                                inits=(0.3, 1.0), attns=("sdpa", "eager"),
                                vocab_sizes=(dks.VOCAB_SIZE, dks.SMALL_VOCAB_SIZE))


@st.composite
def cases(draw):
    config = draw(MODELS)
    return dict(
        config=config,
        prompt=draw(dks.prompts(config.vocab_size, max_size=32)),
        eos=draw(dks.eos_choices(config.vocab_size)),
        max_new_tokens=draw(st.one_of(st.integers(1, 64), st.integers(24, 64))),
        W=draw(st.integers(1, 16)), N=draw(st.integers(2, 8)), G=draw(st.integers(0, 16)),
        pool_from_prompt=draw(st.booleans()), C=draw(st.integers(0, 4)), L=draw(st.integers(1, 16)),
        idle_window=draw(st.sampled_from(("auto", "on", "off"))),
    )


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_lookahead_equals_greedy(case):
    model = case["config"].build()
    ids = torch.tensor([case["prompt"]])
    eos = case["eos"]
    if isinstance(eos, dks.FromOutput):
        free = decodekit.generate(model, ids, max_new_tokens=case["max_new_tokens"], eos_token_id=[])
        eos = eos.resolve(free.sequences[0, ids.shape[1]:].tolist())
    greedy = decodekit.generate(model, ids, max_new_tokens=case["max_new_tokens"], eos_token_id=eos)
    params = {k: case[k] for k in ("W", "N", "G", "pool_from_prompt", "C", "L", "idle_window")}
    out = decodekit.generate(model, ids, "lookahead", max_new_tokens=case["max_new_tokens"], eos_token_id=eos, **params)
    want, got = greedy.sequences[0].tolist(), out.sequences[0].tolist()
    assert got == want, (f"lookahead {params} differs from greedy at position {first_difference(got, want)} "
                         f"on {case['config']}, eos={eos}")
    assert out.stats.new_tokens == len(got) - ids.shape[1]
    longest = max(case["N"] - 1, case["L"] if case["C"] else 0)  # the longest candidate
    assert max(out.stats.accepted_histogram) <= longest + 1
    if case["G"] == 0:
        assert out.stats.mean_accepted == 1.0
