"""The strategy registry: name -> Decoder class, and validated construction from keywords."""

from __future__ import annotations

import difflib
from typing import Any, Mapping

import attrs

from decodekit.core.decoder import Decoder
from decodekit.core.params import ParamInfo, describe
from decodekit.core.types import Capabilities
from decodekit.errors import PluginError, StrategyParameterError, UnknownStrategyError


@attrs.frozen(kw_only=True)
class StrategyInfo:
    name: str
    cls: type[Decoder]
    plugin: str

    @property
    def capabilities(self) -> Capabilities:
        return self.cls.capabilities

    @property
    def params(self) -> list[ParamInfo]:
        return describe(self.cls.Params)


def _suggest(word: str, options: list[str]) -> str:
    lowered = {o.lower(): o for o in options}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean {lowered[match[0]]!r}?" if match else ""


@attrs.define(eq=False)
class Registry:
    strategies: dict[str, StrategyInfo] = attrs.Factory(dict)
    failures: dict[str, str] = attrs.Factory(dict)
    current_plugin: str | None = None

    def register(self, cls: type[Decoder]) -> None:
        """The `register` callback handed to decodekit_register_strategies."""
        plugin = self.current_plugin or "<direct>"
        if not (isinstance(cls, type) and issubclass(cls, Decoder)):
            raise PluginError(f"plugin {plugin!r} registered {cls!r}, which is not a decodekit.Decoder subclass")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r}: {cls.__qualname__}.name must be a non-empty string")
        if not isinstance(getattr(cls, "capabilities", None), Capabilities):
            raise PluginError(f"plugin {plugin!r}: {cls.__qualname__}.capabilities must be a decodekit Capabilities")
        if not attrs.has(cls.Params):
            raise PluginError(f"plugin {plugin!r}: {cls.__qualname__}.Params must be an attrs class")
        if cls.batched() and (cls.propose is Decoder.propose or cls.verify is Decoder.verify):
            raise PluginError(f"plugin {plugin!r}: {cls.__qualname__} must implement propose and verify "
                              f"(or, the pre-batching contract, step)")
        if name in self.strategies:
            other = self.strategies[name]
            raise PluginError(f"strategy name {name!r} from plugin {plugin!r} is already registered by plugin "
                              f"{other.plugin!r} ({other.cls.__qualname__})")
        self.strategies[name] = StrategyInfo(name=name, cls=cls, plugin=plugin)

    def drop_plugin(self, plugin: str) -> None:
        for name in [n for n, info in self.strategies.items() if info.plugin == plugin]:
            del self.strategies[name]

    def names(self) -> list[str]:
        return sorted(self.strategies)

    def get(self, name: str) -> StrategyInfo:
        if not isinstance(name, str) or name not in self.strategies:
            known = ", ".join(self.names())
            hint = _suggest(name, self.names()) if isinstance(name, str) else ""
            raise UnknownStrategyError(f"unknown strategy {name!r}{hint} (known strategies: {known})")
        return self.strategies[name]

    def make_params(self, name: str, params: Mapping[str, Any]) -> Any:
        """Validate keywords against the strategy's Params class and build it."""
        info = self.get(name)
        fields = [f.name for f in attrs.fields(info.cls.Params)]
        for key in params:
            if key not in fields:
                allowed = ", ".join(fields) if fields else "none"
                raise StrategyParameterError(
                    f"unknown parameter {key!r} for {name!r}{_suggest(key, fields)} (parameters: {allowed})")
        try:
            return info.cls.Params(**params)
        except (TypeError, ValueError) as exc:
            raise StrategyParameterError(f"{name}: {exc}") from None

    def build(self, name: str, params: Mapping[str, Any]) -> Decoder:
        return self.get(name).cls(self.make_params(name, params))
