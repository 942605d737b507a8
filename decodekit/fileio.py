"""Writing result files whole or not at all: a file is written beside its final name, then renamed.

An interrupt (Ctrl-C) or a crash in the middle of a write leaves at most a stray temporary file
(named `.NAME.tmp-PID`), never a half-written `results.json` or golden file under the real name.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends normally, it replaces `path` in one rename."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with replacing(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
