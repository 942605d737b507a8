"""Every hook is documented in docs/plugin-hooks.md (with its exact signature) and has a test."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from decodekit.plugins import hookspecs
from decodekit.plugins.manager import hook_names, make_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "plugin-hooks.md"


def signature_text(name: str) -> str:
    """`name(param: annotation, ...) -> return`, annotations as written in hookspecs.py."""
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


def test_hook_names_are_the_hookspecs():
    specified = sorted(make_plugin_manager(load_entry_points=False).hook.__dict__)
    assert hook_names() == [n for n in specified if n.startswith("decodekit_")]
    assert hook_names(), "decodekit specifies at least decodekit_register_strategies"


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_is_documented_with_its_signature(name):
    text = DOC.read_text(encoding="utf-8")
    assert f"## `{name}`" in text, f"docs/plugin-hooks.md has no section '## `{name}`'"
    assert signature_text(name) in text, f"docs/plugin-hooks.md lacks the signature {signature_text(name)}"
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    for part in ("When:", "Returns"):
        assert part in doc, f"the docstring of hookspec {name} must say {part!r}"


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_has_a_test(name):
    tests = (Path(__file__).parent / "test_hooks.py").read_text(encoding="utf-8")
    assert f"def test_hook_{name}(" in tests, f"tests/plugins/test_hooks.py has no test_hook_{name}"
