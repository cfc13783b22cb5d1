"""The consoles every ``stalk`` command prints through.

Output whose reader went away (``stalk dev | tee log``, then Ctrl-C: tee dies first) must not
stop the command in the middle of what it does, such as stopping the processes it started: once
a write meets a closed pipe, that stream's descriptor points at /dev/null and the command goes on.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TextIO

from rich.console import Console


class _PipeSafe:
    """``sys.stdout``/``sys.stderr`` as they are at each write, quiet once their reader is gone."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr

    @property
    def _stream(self) -> TextIO:
        return sys.stderr if self._stderr else sys.stdout

    def _gone(self) -> None:
        # Later writes, and the interpreter's own flush at exit, then land in /dev/null quietly.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", "utf-8")


# Off a terminal (a pipe, a file, CI) rich would lay out for 80 columns, cutting ids in tables and
# breaking command lines people paste: lay out as wide as the content instead.
UNBOUNDED_WIDTH = 10_000


def make_console(*, stderr: bool = False) -> Console:
    """Never hard-wrapped: lines (errors, commands) soft-wrap; off a terminal, tables are as wide as they need."""
    stream = _PipeSafe(stderr)
    known_width = stream.isatty() or "COLUMNS" in os.environ  # noqa: SIM112 - rich's own variable
    return Console(file=stream, highlight=False, soft_wrap=True, width=None if known_width else UNBOUNDED_WIDTH)
