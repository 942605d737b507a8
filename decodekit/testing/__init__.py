"""Tools for testing decoding strategies: tiny random models, Hypothesis strategies, exactness checks.

Plugin authors use these to prove their own strategies exact; decodekit's own suite uses them too.

- tiny_model(arch, ...): a small random model of a real architecture (ARCHITECTURES).
- decodekit.testing.strategies: Hypothesis strategies (tiny_model_configs, prompts, eos_choices,
  generation_settings, generation_cases, batch_cases).
- assert_matches_greedy(strategy, **params): the property "output equals greedy", over drawn cases.
- compare_with_greedy(model, input_ids, strategy, params): one case, with the first differing position.
- compare_batch_with_greedy(model, prompts, strategy, params): a left-padded batch, row by row against
  greedy on each row alone (strategies.batch_cases() draws such batches for assert_matches_greedy).
- The pytest plugin (decodekit.testing.pytest_plugin) exposes these as fixtures.
"""

from decodekit.testing import strategies
from decodekit.testing.exactness import (
    Comparison,
    assert_matches_greedy,
    compare_batch_with_greedy,
    compare_with_greedy,
    first_difference,
)
from decodekit.testing.models import ARCHITECTURES, tiny_model

__all__ = [
    "ARCHITECTURES",
    "Comparison",
    "assert_matches_greedy",
    "compare_batch_with_greedy",
    "compare_with_greedy",
    "first_difference",
    "strategies",
    "tiny_model",
]
