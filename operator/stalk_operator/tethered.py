"""Child processes of ``stalk dev`` that cannot outlive it, however it ends.

``stalk dev`` stops its children in order when it can (workers warm, then Redis). When it cannot
(SIGKILL, or a supervisor's SIGTERM followed by SIGKILL before that order finished), the kernel
ends them: each child asks for SIGKILL when its parent dies (Linux ``PR_SET_PDEATHSIG``, set
between fork and exec). A Celery prefork worker sets the same for its pool processes
(celery.concurrency.prefork.process_initializer), so no grandchild is left either.

Each child leads its own process group, out of the terminal's: a Ctrl-C reaches only
``stalk dev``, whose stop then gives each child one SIGTERM (a second SIGINT would be Celery's
cold shutdown, and Redis would stop under the workers). ``kill_group`` ends what a child left.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1


def _death_signal_setter() -> Callable[[], None] | None:
    """A function for the child, between fork and exec: SIGKILL it when the parent dies."""
    if not sys.platform.startswith("linux"):
        return None  # elsewhere stalk dev's own stop is all there is
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def set_death_signal() -> None:
        # Only async-signal-safe work here: this runs in the forked child of a threaded parent.
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(1)

    return set_death_signal


def start(argv: Sequence[str], *, env: Mapping[str, str] | None = None, output: IO | None = None) -> subprocess.Popen:
    """Start ``argv`` tethered to this process; ``output`` (a file) takes its stdout and stderr.

    Note (Linux): the death signal follows the *thread* that started the child, so call this
    from a thread that lives as long as the child should (stalk dev's main or autoscaler thread).
    """
    return subprocess.Popen(
        list(argv), env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL, stdout=output,
        stderr=subprocess.STDOUT if output is not None else None, start_new_session=True,
        preexec_fn=_death_signal_setter(),  # noqa: PLW1509 - prctl and getppid only, see above
    )


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL whatever is left in the child's process group (it leads it: its pid is the group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
