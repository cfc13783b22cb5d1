"""``stalk dev --reload``: restart the workers when a task module's code changes.

The pure part (``watch_roots``: which folders to watch; ``matters``: which changed file calls for a
restart) is apart from the I/O (``Reloader``: a thread running ``watchfiles.watch``). Only workers
restart, with Celery's warm shutdown (see ``local_mode``), so Redis, the API and queued tasks stay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("stalk.local")

# Folders whose .py files are never the user's task code: tools, caches, installed packages.
IGNORED_PARTS = frozenset({".git", ".venv", "venv", "__pycache__", "site-packages", "dist-packages", ".tox",
                           ".mypy_cache", ".pytest_cache", ".ruff_cache", "node_modules"})
# watchfiles' default: changes within this many milliseconds are one batch (an editor's save is several).
DEBOUNCE_MS = 400


def watch_roots(import_folder: Path, module_files: Iterable[str | None]) -> list[Path]:
    """The folder put on the import path, plus the folders of imported task modules outside it
    (outermost only, since watching is recursive); files of installed packages are left out."""
    candidates = [Path(import_folder).resolve()]
    for file in module_files:
        if file is None:  # a namespace package or a built-in: nothing to watch
            continue
        folder = Path(file).resolve().parent
        if not IGNORED_PARTS.intersection(folder.parts):
            candidates.append(folder)
    roots: list[Path] = []
    for folder in sorted(set(candidates), key=lambda p: len(p.parts)):
        if not any(folder.is_relative_to(root) for root in roots):
            roots.append(folder)
    return roots


def matters(path: str | Path, ignored: Iterable[Path] = ()) -> bool:
    """A change calls for a restart when it is to a .py file outside tools' folders and ``ignored``
    (stalk dev's run folder)."""
    path = Path(path)
    if path.suffix != ".py" or IGNORED_PARTS.intersection(path.parts):
        return False
    return not any(path.is_relative_to(Path(folder).resolve()) for folder in ignored)


def first_change(paths: Iterable[str], ignored: Iterable[Path] = ()) -> str | None:
    """The file to name in the reload line: the first, in sorted order, of a batch's changes that matter."""
    return next((p for p in sorted(paths) if matters(p, ignored)), None)


class Reloader:
    """Watches ``roots`` in a thread; on a change that matters, calls ``on_change(path)``."""

    def __init__(self, roots: list[Path], on_change: Callable[[str], None], *, ignored: Iterable[Path] = ()):
        self.roots = roots
        self._on_change = on_change
        self._ignored = [Path(p).resolve() for p in ignored]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="reloader")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        import watchfiles  # imported on use: only stalk dev --reload needs it

        try:
            for changes in watchfiles.watch(*self.roots, watch_filter=lambda _change, path: matters(path, self._ignored),
                                            debounce=DEBOUNCE_MS, stop_event=self._stop, raise_interrupt=False):
                changed = first_change((path for _, path in changes), self._ignored)
                if changed is not None and not self._stop.is_set():
                    self._on_change(changed)
        except Exception as exc:  # noqa: BLE001 - a watcher that fails must not end stalk dev
            log.warning("stopped watching task code for changes: %s", exc)
