"""Tools for testing decoding strategies: tiny random models, Hypothesis strategies, exactness checks.

Plugin authors use these to prove their own strategies exact; decodekit's own suite uses them too.
"""

from decodekit.testing.models import ARCHITECTURES, tiny_model

__all__ = ["ARCHITECTURES", "tiny_model"]
