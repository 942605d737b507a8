import pytest

from decodekit.bench.methods import REFERENCE, default_method_texts, parse_method, parse_methods
from decodekit.bench.sweep import parse_grid, sweep_specs
from decodekit.errors import StrategyParameterError, UnknownStrategyError
from decodekit.plugins.manager import get_registry


def test_parses_strategies_and_hf_peers(chunk_strategy):
    spec = parse_method(f"{chunk_strategy}:k=3")
    assert (spec.label, spec.name, spec.family, dict(spec.params), spec.exact) == (
        f"{chunk_strategy}:k=3", chunk_strategy, "decodekit", {"k": 3}, True)
    lookup = parse_method("hf-prompt-lookup:num_tokens=7, max_ngram=3")
    assert lookup.family == "hf" and dict(lookup.params) == {"num_tokens": 7, "max_ngram": 3}
    assisted = parse_method("hf-assisted:draft=/models/tiny")
    assert assisted.draft == "/models/tiny" and dict(assisted.params) == {}
    assert parse_method(" greedy ").label == "greedy"


@pytest.mark.parametrize("text, says", [
    ("greedyy", "unknown strategy 'greedyy'; did you mean 'greedy'?"),
    ("greedy:W=3", "unknown parameter 'W' for 'greedy' (parameters: none)"),
    ("greedy:W", "parameters are KEY=VALUE separated by commas, got 'W'"),
    ("hf-prompt-lookup:num_token=3", "unknown parameter 'num_token' for 'hf-prompt-lookup'; did you mean 'num_tokens'?"),
    ("hf-prompt-lookup:num_tokens=0", "hf-prompt-lookup: num_tokens must be >= 1, got 0"),
    ("hf-prompt-lookup:num_tokens=many", "num_tokens must be an integer, got 'many'"),
    ("hf-prompt-lookup:num_tokens=3,num_tokens=4", "parameter 'num_tokens' given twice"),
    ("hf-assisted", "hf-assisted needs a draft model"),
    ("", "non-empty string"),
])
def test_spec_errors_name_the_parameter_value_and_what_is_allowed(text, says):
    with pytest.raises((StrategyParameterError, UnknownStrategyError)) as info:
        parse_method(text)
    assert says in str(info.value)


def test_strategy_parameters_are_validated_by_the_registry(chunk_strategy):
    with pytest.raises(StrategyParameterError, match=f"{chunk_strategy}: k must be <= 8, got 9"):
        parse_method(f"{chunk_strategy}:k=9")
    with pytest.raises(StrategyParameterError, match="did you mean 'k'"):
        parse_method(f"{chunk_strategy}:K=2")


def test_reference_is_added_and_duplicates_refused():
    assert [s.label for s in parse_methods(["greedy"])] == [REFERENCE, "greedy"]
    with pytest.raises(StrategyParameterError, match="given twice: greedy"):
        parse_methods(["greedy", "greedy"])


def test_defaults_come_from_the_registry(chunk_strategy):
    texts = default_method_texts()
    assert texts[:3] == [REFERENCE, "greedy", "hf-prompt-lookup"]
    assert chunk_strategy in texts
    registry = get_registry()
    for name in texts[3:]:
        caps = registry.get(name).capabilities
        assert caps.exact and not caps.needs_draft_model


def test_grid_parsing_and_ties():
    assert parse_grid("x", "W=4,7;N=3;G=W") == [{"W": "4", "N": "3", "G": "4"}, {"W": "7", "N": "3", "G": "7"}]
    with pytest.raises(StrategyParameterError, match="ties 'G' to 'Q', which is not a key"):
        parse_grid("x", "W=4;G=Q")
    with pytest.raises(StrategyParameterError, match="expected KEY=V1,V2"):
        parse_grid("x", "W4")


def test_sweep_specs_validate_every_configuration(chunk_strategy):
    grid, specs = sweep_specs(chunk_strategy, "k=1,2")
    assert grid == "k=1,2" and [s.label for s in specs] == [f"{chunk_strategy}:k=1", f"{chunk_strategy}:k=2"]
    with pytest.raises(StrategyParameterError, match="k must be <= 8, got 20"):
        sweep_specs(chunk_strategy, "k=1,20")
    with pytest.raises(StrategyParameterError, match="no default grid"):
        sweep_specs(chunk_strategy)


def test_a_sweep_reuses_an_equivalent_listed_method(chunk_strategy):
    from decodekit.bench.api import plan_methods

    specs, plan = plan_methods(["hf-greedy", chunk_strategy], sweep=chunk_strategy, sweep_grid="k=1,2")
    assert [s.label for s in specs] == ["hf-greedy", chunk_strategy, f"{chunk_strategy}:k=1"]
    assert plan["labels"] == [f"{chunk_strategy}:k=1", chunk_strategy]  # k=2 is the default
