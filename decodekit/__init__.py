"""decodekit: exact, faster decoding for HuggingFace causal language models.

The public names load on first use (PEP 562), so that `import decodekit` and the command line's
start-up do not import torch and transformers before they are needed: a Ctrl-C while the command
line starts then ends in one line, not in a traceback from inside an import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (a module itself for `models`)
_EXPORTS = {
    "AcceptanceModel": "decodekit.core.planner",
    "Capabilities": "decodekit.core.types",
    "DecodeState": "decodekit.core.decoder",
    "Decoder": "decodekit.core.decoder",
    "DecodekitError": "decodekit.errors",
    "Draft": "decodekit.core.planner",
    "Extra": "decodekit.core.planner",
    "GenerationOutput": "decodekit.core.types",
    "GenerationStats": "decodekit.core.types",
    "InputError": "decodekit.errors",
    "ModelNotSupportedError": "decodekit.errors",
    "Proposal": "decodekit.core.decoder",
    "StepPlanner": "decodekit.core.planner",
    "StrategyParameterError": "decodekit.errors",
    "UnknownStrategyError": "decodekit.errors",
    "Verdict": "decodekit.core.decoder",
    "generate": "decodekit.api",
    "hf_generate": "decodekit.api",
    "hookimpl": "decodekit.plugins.hookspecs",
    "list_strategies": "decodekit.api",
    "models": "decodekit.models",
    "param": "decodekit.core.params",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from decodekit import models
    from decodekit.api import generate, hf_generate, list_strategies
    from decodekit.core.decoder import DecodeState, Decoder, Proposal, Verdict
    from decodekit.core.params import param
    from decodekit.core.planner import AcceptanceModel, Draft, Extra, StepPlanner
    from decodekit.core.types import Capabilities, GenerationOutput, GenerationStats
    from decodekit.errors import (
        DecodekitError,
        InputError,
        ModelNotSupportedError,
        StrategyParameterError,
        UnknownStrategyError,
    )
    from decodekit.plugins.hookspecs import hookimpl


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'decodekit' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if name == "models" else getattr(loaded, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
