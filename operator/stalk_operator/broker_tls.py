"""The files of a TaskQueue's broker TLS (spec.broker.tls): Secret values written where redis-py can
load them, since Python's ``ssl`` takes a client certificate and key only from files.

Each file is named by its content's hash: TaskQueues that share a broker and its Secrets get the
same paths, so the same URL, so one broker loop; a rotated certificate gets new paths, so a new URL,
and the supervisor replaces that broker's loop (and client) with one that loads it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class TlsFiles:
    """A directory only this process can read, created on first use."""

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory

    @property
    def directory(self) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="stalk-operator-tls-"))  # mode 0700
        return self._directory

    def write(self, content: str, suffix: str) -> str:
        """The path of a file holding ``content`` (written once, mode 0600)."""
        digest = hashlib.sha256(content.encode()).hexdigest()[:32]
        path = self.directory / f"{digest}.{suffix}"
        if not path.exists():
            temporary = path.with_suffix(".tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(content)
            temporary.replace(path)  # a reader never sees half a file
        return str(path)
