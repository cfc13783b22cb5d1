"""The API's one writer: group commits, batches and the deferred "published" marks.

On PostgreSQL they run on one thread of their own. On the event loop, every request waited for
each commit's round trip and the server's WAL flush, ``/healthz`` included (issue 12). On the
thread the loop goes on answering while a write waits for I/O. One thread, not a pool: writes
still go one at a time, in order, and a group that waits for the thread grows, so one commit
serves more requests under load. On SQLite they stay on the loop (``inline``, see ``Writer``).
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
    """``inline``: the writes run on the event loop itself, for a database whose commit does not
    wait for I/O (SQLite in WAL mode with synchronous=NORMAL: no fsync on commit). There the hand-off
    to a thread cost more than it saved: single submissions 0.74-0.91x as many per second, p50
    25 ms against 17 ms (GIL hand-offs between the loop and the thread; bench/core_throughput.py).
    """

    def __init__(self, *, inline: bool = False) -> None:
        self.inline = inline
        self._thread = None if inline else ThreadPoolExecutor(1, thread_name_prefix="stalk-writer")
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, work: Callable[..., T], /, *args) -> T:
        """``work(*args)`` on the writing thread, after the writes already waiting for it."""
        self._loop = asyncio.get_running_loop()
        if self._thread is None:
            return work(*args)
        return await self._loop.run_in_executor(self._thread, work, *args)

    def later(self, delay: float, work: Callable[..., object], /, *args) -> None:
        """``work(*args)`` on the writing thread in ``delay`` seconds; callable from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self._thread is None:
            loop.call_later(delay, work, *args)  # inline writes run on the loop: this is its thread
            return
        loop.call_soon_threadsafe(loop.call_later, delay, self._submit, work, args)

    def _submit(self, work: Callable[..., object], args: tuple) -> None:
        try:
            self._thread.submit(work, *args).add_done_callback(_log_failure)
        except RuntimeError:  # shut down: the API's stop flushes what is left itself
            pass

    def close(self) -> None:
        """Wait for the writes under way; later ones are not started."""
        if self._thread is not None:
            self._thread.shutdown(wait=True, cancel_futures=True)


def _log_failure(future: Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a deferred write failed", exc_info=future.exception())
