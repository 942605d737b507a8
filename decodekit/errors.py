"""The errors decodekit raises. Every one names what to fix; all but RankMismatchError (which a decode over
several ranks raises when they part) are raised before any forward pass."""

from __future__ import annotations


class DecodekitError(ValueError):
    """Base class: a call to decodekit was given something it cannot use."""


class UnknownStrategyError(DecodekitError, KeyError):
    """No strategy is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class StrategyParameterError(DecodekitError):
    """A strategy parameter is unknown, of the wrong type or out of its allowed range."""


class InputError(DecodekitError):
    """input_ids, max_new_tokens or eos_token_id cannot be decoded."""


class ModelNotSupportedError(DecodekitError):
    """The model cannot be driven through its public forward with a cache and a 4-D mask."""


class PluginError(DecodekitError):
    """A plugin registered something invalid (a duplicate name, a non-Decoder class)."""


class ModelNotInstalledError(DecodekitError, ImportError):
    """The default model's wheel (or what reading GGUF needs) is not installed."""


class ModelCacheError(DecodekitError):
    """The default model's cache folder cannot be written, so a missing or damaged conversion cannot be redone."""


class RankMismatchError(DecodekitError):
    """The ranks sharing a sharded model (tensor parallelism) did not make the same decision: the step, the row
    and the ranks are named. Raised on every rank at once, instead of going on with parted caches or hanging."""
