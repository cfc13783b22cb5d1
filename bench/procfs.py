"""What /proc says about a process, shared by the benchmarks (Linux only)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in kB, from /proc/PID/status; empty when the process is gone."""
    values = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values
