"""decodekit: exact, faster decoding for HuggingFace causal language models."""

from decodekit import models
from decodekit.api import generate, hf_generate, list_strategies
from decodekit.core.decoder import Decoder, DecodeState
from decodekit.core.params import param
from decodekit.core.types import Capabilities, GenerationOutput, GenerationStats
from decodekit.errors import (
    DecodekitError,
    InputError,
    ModelNotSupportedError,
    StrategyParameterError,
    UnknownStrategyError,
)
from decodekit.plugins.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "Capabilities",
    "DecodeState",
    "Decoder",
    "DecodekitError",
    "GenerationOutput",
    "GenerationStats",
    "InputError",
    "ModelNotSupportedError",
    "StrategyParameterError",
    "UnknownStrategyError",
    "generate",
    "hf_generate",
    "hookimpl",
    "list_strategies",
    "models",
    "param",
]
