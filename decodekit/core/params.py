"""Strategy parameters: attrs fields that carry their allowed range and a help text.

A strategy declares its parameters as a frozen attrs class built from `param(...)` fields. The
registry validates user keywords against it; the CLI and `decodekit strategies` read the metadata.
"""

from __future__ import annotations

from typing import Any

import attrs

_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _allowed_text(kind: type, ge: float | None, le: float | None, choices: tuple | None, optional: bool) -> str:
    if optional:
        return _allowed_text(kind, ge, le, choices, False) + ", or unset (None)"
    if choices is not None:
        return "one of " + ", ".join(repr(c) for c in choices)
    if ge is not None and le is not None:
        return f"{kind.__name__} in [{ge}, {le}]"
    if ge is not None:
        return f"{kind.__name__} >= {ge}"
    if le is not None:
        return f"{kind.__name__} <= {le}"
    return _KINDS.get(kind, kind.__name__)


def _validator(kind: type, ge: float | None, le: float | None, choices: tuple | None, optional: bool):
    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        name = attribute.name
        if value is None and optional:
            return
        ok_type = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok_type = True
        if not ok_type:
            raise ValueError(f"{name} must be {_KINDS.get(kind, kind.__name__)}, got {value!r}")
        if choices is not None and value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        if ge is not None and value < ge:
            raise ValueError(f"{name} must be >= {ge}, got {value!r}")
        if le is not None and value > le:
            raise ValueError(f"{name} must be <= {le}, got {value!r}")

    return check


def param(default: Any, *, kind: type | None = None, ge: float | None = None, le: float | None = None,
          choices: tuple | None = None, help: str = "") -> Any:
    """An attrs field for a strategy parameter with its type, range and help text.

    A default of None makes the parameter optional (give `kind`): unset means the strategy chooses.
    """
    optional = default is None
    if optional and kind is None:
        raise TypeError("param(None, ...) needs kind= (the type of a value when one is given)")
    kind = kind or type(default)
    return attrs.field(
        default=default,
        validator=_validator(kind, ge, le, choices, optional),
        metadata={"decodekit": {"kind": kind, "allowed": _allowed_text(kind, ge, le, choices, optional),
                                "help": help}},
    )


@attrs.frozen(kw_only=True)
class ParamInfo:
    """One parameter as `decodekit strategies` shows it."""

    name: str
    kind: type
    default: Any
    allowed: str
    help: str


def describe(config_cls: type) -> list[ParamInfo]:
    out = []
    for field in attrs.fields(config_cls):
        meta = field.metadata.get("decodekit", {})
        out.append(ParamInfo(name=field.name, kind=meta.get("kind", object), default=field.default,
                             allowed=meta.get("allowed", ""), help=meta.get("help", "")))
    return out


def parse_value(info: ParamInfo, text: str) -> Any:
    """Turn a command-line string into the parameter's type (validation happens in the config)."""
    if info.kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{info.name} must be true or false, got {text!r}")
    if info.kind in (int, float):
        try:
            return info.kind(text)
        except ValueError:
            raise ValueError(f"{info.name} must be {_KINDS[info.kind]}, got {text!r}") from None
    return text
