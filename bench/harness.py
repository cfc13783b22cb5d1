"""What the bench/ scripts share: their error, a free loopback port, and polling until a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class BenchError(RuntimeError):
    """A scenario could not run (a process died, a deadline passed); the message says which."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(ready: Callable[[], T], *, deadline: float, what: str, interval: float = 0.05,
             alive: Callable[[], object] | None = None) -> T:
    """Poll ``ready()`` until it returns something truthy; fail at the deadline, or at once when
    ``alive()`` raises (the process that should get ready died)."""
    end = time.monotonic() + deadline
    last: Exception | None = None
    while time.monotonic() < end:
        if alive is not None:
            alive()
        try:
            value = ready()
        except Exception as exc:  # noqa: BLE001 - not there yet
            value, last = None, exc
        if value:
            return value
        time.sleep(interval)
    raise BenchError(f"timed out after {deadline:.0f}s waiting for {what}" + (f" (last error: {last})" if last else ""))
