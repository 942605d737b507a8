"""decodekit.testing: the public Hypothesis strategies, the exactness helpers and the pytest plugin."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st

import decodekit
from decodekit.errors import DecodekitError, StrategyParameterError, UnknownStrategyError
from decodekit.testing import ARCHITECTURES, assert_matches_greedy, first_difference
from decodekit.testing import strategies as dks


@given(dks.prompts())
def test_prompts_are_short_and_avoid_special_tokens(prompt):
    assert 1 <= len(prompt) <= 24
    assert all(3 <= t < dks.VOCAB_SIZE for t in prompt)


def test_prompts_include_repetitive_ones():
    def repetitive(p):  # a 3-gram that occurs twice
        grams = [tuple(p[i:i + 3]) for i in range(len(p) - 2)]
        return len(grams) - len(set(grams)) >= 3

    assert repetitive(find(dks.prompts(), repetitive, settings=settings(database=None)))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_model_configs_cover_every_architecture_and_build_real_models(arch):
    config = find(dks.tiny_model_configs(), lambda c: c.arch == arch, settings=settings(database=None))
    model = config.build()
    assert model.config.model_type == arch and model.config.vocab_size == config.vocab_size
    assert config.build() is model  # cached


def test_model_configs_include_a_small_vocabulary_where_greedy_loops():
    config = find(dks.tiny_model_configs(), lambda c: c.vocab_size == dks.SMALL_VOCAB_SIZE,
                  settings=settings(database=None))
    assert config.build().config.vocab_size == dks.SMALL_VOCAB_SIZE


@settings(max_examples=20)
@given(dks.generation_cases())
def test_prompts_and_eos_of_a_case_fit_its_models_vocabulary(case):
    assert all(3 <= t < case.model.vocab_size for t in case.prompt)
    ids = [case.eos] if isinstance(case.eos, int) else case.eos if isinstance(case.eos, list) else []
    assert all(2 <= t < case.model.vocab_size for t in ids)


def test_eos_choices_cover_every_kind():
    kinds = [lambda e: e is None, lambda e: e == [], lambda e: isinstance(e, dks.FromOutput),
             lambda e: isinstance(e, int), lambda e: isinstance(e, list) and len(e) >= 2]
    for kind in kinds:
        find(dks.eos_choices(), kind, settings=settings(database=None))


def test_from_output_resolves_against_the_greedy_output():
    assert dks.FromOutput(index=5).resolve([7, 8, 9]) == 9
    assert dks.FromOutput(index=0).resolve([]) is None


@given(st.lists(st.integers(0, 3), max_size=6), st.lists(st.integers(0, 3), max_size=6))
def test_first_difference(a, b):
    at = first_difference(a, b)
    if a == b:
        assert at is None
    else:
        assert a[:at] == b[:at] and (at == min(len(a), len(b)) or a[at] != b[at])


@settings(max_examples=10)
@given(dks.generation_cases())
def test_generation_cases_are_valid_generate_calls(case):
    from decodekit.testing.exactness import check_case

    result = check_case("greedy", {}, case)
    assert result.identical and 1 <= len(result.greedy) <= case.max_new_tokens


def test_assert_matches_greedy_checks_name_and_parameters_first():
    with pytest.raises(UnknownStrategyError, match="unknown strategy 'gredy'; did you mean 'greedy'"):
        assert_matches_greedy("gredy")
    with pytest.raises(StrategyParameterError, match="unknown parameter 'W' for 'greedy'"):
        assert_matches_greedy("greedy", W=3)


def test_assert_matches_greedy_refuses_a_strategy_not_declared_exact(decodekit_register):
    class Inexact(decodekit.Decoder):
        name = "inexact-test"
        capabilities = decodekit.Capabilities(exact=False)

        def step(self, state):
            return [0]

    decodekit_register(Inexact)
    with pytest.raises(DecodekitError, match="'inexact-test' does not declare capabilities.exact=True"):
        assert_matches_greedy("inexact-test")


def test_the_pytest_plugin_is_installed_and_its_fixtures_work_in_one_line(tmp_path):
    test_file = tmp_path / "test_uses_fixtures.py"
    test_file.write_text(textwrap.dedent('''
        import decodekit

        class Copy(decodekit.Decoder):
            name = "copy-of-greedy"
            capabilities = decodekit.Capabilities(exact=True)

            def step(self, state):
                logits = state.forward([state.pending], logits_to_keep=1)
                return [int(state.choose(logits[-1]))]

        def test_exact(assert_matches_greedy, decodekit_register):
            decodekit_register(Copy)
            assert_matches_greedy("copy-of-greedy")

        def test_registered_strategies_are_removed_after_the_test():
            assert "copy-of-greedy" not in decodekit.list_strategies()

        def test_tiny(decodekit_tiny_model):
            assert decodekit_tiny_model("gpt2").config.model_type == "gpt2"
    '''))
    done = subprocess.run([sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
                           "--hypothesis-profile=dev", "--rootdir", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_strategies_that_need_a_draft_model_get_one(decodekit_register):
    seen = []

    class NeedsDraft(decodekit.Decoder):
        name = "needs-draft-test"
        capabilities = decodekit.Capabilities(exact=True, needs_draft_model=True)

        def step(self, state):
            seen.append(state.draft.model)
            logits = state.forward([state.pending], logits_to_keep=1)
            return [int(state.choose(logits[-1]))]

    decodekit_register(NeedsDraft)
    assert_matches_greedy("needs-draft-test", hypothesis_settings=settings(max_examples=15, database=None))
    assert seen and all(m.config.vocab_size in (dks.VOCAB_SIZE, dks.SMALL_VOCAB_SIZE) for m in seen)
