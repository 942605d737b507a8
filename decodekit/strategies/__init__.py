"""The built-in strategies. They register through the same pluggy hook as third-party plugins."""

from __future__ import annotations

from typing import Callable

from decodekit.plugins.hookspecs import hookimpl


@hookimpl
def decodekit_register_strategies(register: Callable) -> None:
    from decodekit.strategies.greedy import Greedy
    from decodekit.strategies.jacobi import Jacobi
    from decodekit.strategies.lookahead import Lookahead
    from decodekit.strategies.speculative import Speculative

    register(Greedy)
    register(Jacobi)
    register(Lookahead)
    register(Speculative)
