"""The plugin module named by the entry point: decodekit calls its hook implementations."""

from __future__ import annotations

from typing import Callable

import decodekit


@decodekit.hookimpl
def decodekit_register_strategies(register: Callable[[type[decodekit.Decoder]], None]) -> None:
    from decodekit_prompt_lookup.strategy import PromptLookup

    register(PromptLookup)
