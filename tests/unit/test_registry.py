import attrs
import pytest

import decodekit
from decodekit.core.params import param
from decodekit.core.registry import Registry
from decodekit.errors import PluginError, StrategyParameterError
from decodekit.plugins.manager import get_registry
from decodekit.strategies.greedy import Greedy


@attrs.frozen(kw_only=True)
class WindowParams:
    W: int = param(15, ge=1, le=64, help="window width")
    N: int = param(5, ge=2, help="n-gram size")
    exact_only: bool = param(True, help="flag")


class Windowed(decodekit.Decoder):
    name = "windowed"
    capabilities = decodekit.Capabilities(exact=True)
    Params = WindowParams

    def step(self, state):
        raise AssertionError("not run here")


def registry():
    r = Registry()
    r.register(Greedy)
    r.register(Windowed)
    return r


def test_builtins_register_through_the_hook():
    assert "greedy" in decodekit.list_strategies()
    assert get_registry().get("greedy").plugin == "decodekit.strategies"


@pytest.mark.parametrize("params, message", [
    (dict(W=0), r"windowed: W must be >= 1, got 0"),
    (dict(W=65), r"windowed: W must be <= 64, got 65"),
    (dict(W="7"), r"windowed: W must be an integer, got '7'"),
    (dict(W=True), r"windowed: W must be an integer, got True"),
    (dict(w=7), r"unknown parameter 'w' for 'windowed'; did you mean 'W'\? \(parameters: W, N, exact_only\)"),
    (dict(exact_only=1), r"exact_only must be true or false, got 1"),
])
def test_parameter_errors_name_parameter_value_and_range(params, message):
    with pytest.raises(StrategyParameterError, match=message):
        registry().make_params("windowed", params)


def test_defaults_and_valid_values():
    assert registry().make_params("windowed", {"W": 7}) == WindowParams(W=7, N=5, exact_only=True)


def test_duplicate_names_are_refused():
    r = registry()
    with pytest.raises(PluginError, match="strategy name 'greedy' .* already registered"):
        r.register(Greedy)


def test_non_decoder_is_refused():
    with pytest.raises(PluginError, match="not a decodekit.Decoder subclass"):
        Registry().register(object)


def test_describe_lists_ranges():
    info = registry().get("windowed")
    assert [(p.name, p.default, p.allowed) for p in info.params] == [
        ("W", 15, "int in [1, 64]"), ("N", 5, "int >= 2"), ("exact_only", True, "true or false")]
