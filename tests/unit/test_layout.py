"""The layout rule of DESIGN.md: the backend (the package core/backend/: the model's forward and cache, and
its generation module, the generate() adapter) is the only code that imports transformers."""

import ast
from pathlib import Path

import decodekit

PACKAGE = Path(decodekit.__file__).resolve().parent
BACKEND = "core/backend/"  # the backend package: its forward and cache, and model.generate's settings


def transformers_imports(path: Path) -> list[int]:
    """Line numbers of `import transformers...` / `from transformers... import` statements in `path`."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "transformers" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "transformers":
            lines.append(node.lineno)
    return lines


def test_only_the_backend_imports_transformers():
    found = {str(p.relative_to(PACKAGE)): transformers_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}
    offenders = {name: lines for name, lines in found.items() if lines and not name.startswith(BACKEND)}
    assert offenders == {}, f"transformers imported outside {BACKEND}: {offenders}"
    assert found["core/backend/__init__.py"], "the check must see the backend's own import (else it cannot fail)"
