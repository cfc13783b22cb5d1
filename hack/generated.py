"""Files generated from another source: write them, or (``--check``) fail when they are stale."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_or_check(path: Path, text: str, *, check: bool, tool: str, regenerate: str) -> int:
    """Write ``text`` to ``path``; with ``check``, exit status 1 and one line when they differ."""
    if check:
        if not path.exists() or path.read_text() != text:
            print(f"{tool}: {path.relative_to(REPO)} is out of date: run `{regenerate}`", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"{tool}: wrote {path.relative_to(REPO)} ({len(text.splitlines())} lines)")
    return 0
