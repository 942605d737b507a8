"""The layout rule of DESIGN.md: core/backend.py (with core/hf_generation.py, the generate() adapter) is the only
module that imports transformers."""

import ast
from pathlib import Path

import decodekit

PACKAGE = Path(decodekit.__file__).resolve().parent
# the backend, and the adapter that resolves model.generate's arguments (see its docstring)
ADAPTERS = ("core/backend.py", "core/hf_generation.py")


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
    offenders = {name: lines for name, lines in found.items() if lines and name not in ADAPTERS}
    assert offenders == {}, f"transformers imported outside {ADAPTERS}: {offenders}"
    assert found["core/backend.py"], "the check must see the backend's own import (else it cannot fail)"
