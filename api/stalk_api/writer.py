"""The API's one writing thread: group commits, batches and the deferred "published" marks.

They used to run on the event loop, which then waited for every commit: a PostgreSQL round trip
and its WAL flush, an SQLite checkpoint's fsync, or SQLite's busy handler while a worker held the
write lock (up to its 30 s timeout). Every other request waited too, ``/healthz`` included
(issue 12). On this thread the loop goes on answering while a write waits for I/O. One thread,
not a pool: writes still go one at a time, in order, as SQLite wants them, and a group that
waits for the thread grows, so one commit serves more requests under load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Writer:
    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="stalk-writer")
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, work: Callable[..., T], /, *args) -> T:
        """``work(*args)`` on the writing thread, after the writes already waiting for it."""
        self._loop = asyncio.get_running_loop()
        return await self._loop.run_in_executor(self._thread, work, *args)

    def later(self, delay: float, work: Callable[..., object], /, *args) -> None:
        """``work(*args)`` on the writing thread in ``delay`` seconds; callable from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(loop.call_later, delay, self._submit, work, args)

    def _submit(self, work: Callable[..., object], args: tuple) -> None:
        try:
            self._thread.submit(work, *args).add_done_callback(_log_failure)
        except RuntimeError:  # shut down: the API's stop flushes what is left itself
            pass

    def close(self) -> None:
        """Wait for the writes under way; later ones are not started."""
        self._thread.shutdown(wait=True, cancel_futures=True)


def _log_failure(future: Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a deferred write failed", exc_info=future.exception())
