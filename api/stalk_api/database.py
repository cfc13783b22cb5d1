"""The record store as the API process uses it: a bounded number of database calls at a time, each
on one worker thread that opens its session, does its work and closes the session before the
thread is given back.

Why not a session per request (a ``yield`` dependency): the session then holds its connection
from the first query until FastAPI's cleanup, and between the two FastAPI validates the answer on
the default thread pool (40 threads). At 60 concurrent reads every pool thread waited for a
connection while every connection waited, in a finished session, for a thread: a deadlock broken
only by the pool's 30 s timeout (issue 12). Here a call first takes one of ``connections`` slots
on the event loop, where waiting costs no thread and no connection, and the pool holds a
connection for every slot plus the ones the event loop itself uses (group commits, ``/readyz``),
so a thread that runs never waits for a connection. A request that cannot get a slot within
``wait_seconds`` is answered 503 with ``Retry-After`` instead of queueing for ever.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from stalk_workers.records import db

T = TypeVar("T")

# Connections the event loop holds outside the slots: one group commit or batch at a time, and
# one /readyz check.
LOOP_CONNECTIONS = 2
RETRY_AFTER_SECONDS = 1


class Busy(Exception):
    """No database slot freed up within the wait: the API sheds the request (503, Retry-After)."""


class Unwritable(Exception):
    """The SQLite file the API writes is gone, replaced or cannot be written."""


@dataclass(frozen=True)
class SqliteFile:
    """Which file an SQLite URL names, and which file the API's connections have open.

    SQLite keeps writing into a file that was unlinked (or its directory removed) through the
    connections that had it open, while the path names nothing or a new, empty file: tasks go
    into a file nobody will read again (issue 12, 22,451 of them). Comparing the inode opened at
    start with the one the path names now catches it.
    """

    path: Path
    device_inode: tuple[int, int]

    @classmethod
    def of(cls, engine: Engine) -> SqliteFile | None:
        url = make_url(str(engine.url))
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        path = Path(url.database).resolve()
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))  # the file exists from here on
        info = path.stat()
        return cls(path=path, device_inode=(info.st_dev, info.st_ino))

    def problem(self) -> str | None:
        """Why writes to this file would be lost or fail; None when it is the file on disk and writable."""
        try:
            info = self.path.stat()
        except OSError as exc:
            return f"the SQLite file {self.path} is gone ({exc.strerror})"
        if (info.st_dev, info.st_ino) != self.device_inode:
            return f"the SQLite file {self.path} was replaced by another file: restart the API"
        # Root passes every permission check except the immutable flag (chattr +i); others also
        # fail on the mode. access() asks the kernel, so both count.
        for path in (self.path, self.path.parent):
            if not os.access(path, os.W_OK):
                return f"{'the SQLite file' if path == self.path else 'the directory'} {path} is not writable"
        if not stat.S_ISREG(info.st_mode):
            return f"{self.path} is not a regular file"
        return None


class Database:
    def __init__(self, engine: Engine, *, connections: int, wait_seconds: float) -> None:
        self.engine = engine
        self.sessions: sessionmaker = db.session_factory(engine)
        self.wait_seconds = wait_seconds
        self.sqlite_file = SqliteFile.of(engine)
        self._slots = anyio.CapacityLimiter(connections)
        # Always free while a slot is held: run_sync takes a limiter of its own, and the default
        # one (40 threads) is shared with every other sync route.
        self._threads = anyio.CapacityLimiter(connections)
        self._check = anyio.CapacityLimiter(1)

    @classmethod
    def open(cls, url: str, *, connections: int, wait_seconds: float, sqlite_executemany: bool = True) -> Database:
        engine = db.create_engine(url, pool_size=connections + LOOP_CONNECTIONS, max_overflow=0,
                                  pool_timeout=max(wait_seconds, 5.0), sqlite_executemany=sqlite_executemany)
        return cls(engine, connections=connections, wait_seconds=wait_seconds)

    async def call(self, work: Callable[..., T], /, *args) -> T:
        """``work(*args)`` on a worker thread once a slot is free; Busy if none frees in time."""
        try:
            with anyio.fail_after(self.wait_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise Busy(f"the API is busy: no database connection freed up within {self.wait_seconds:g}s") from None
        try:
            return await anyio.to_thread.run_sync(work, *args, limiter=self._threads)
        finally:
            self._slots.release()

    async def run(self, work: Callable[..., T], /, *args) -> T:
        """``work(session, *args)`` with a session opened and closed on the thread that runs it."""
        return await self.call(self._in_session, work, args)

    def _in_session(self, work: Callable[..., T], args: tuple) -> T:
        with self.sessions() as session:
            return work(session, *args)

    def writable_problem(self) -> str | None:
        """Why a write would not reach the database file on disk (SQLite only); None if it would."""
        return self.sqlite_file.problem() if self.sqlite_file else None

    async def readiness_problem(self) -> str | None:
        """What keeps the database from taking writes, checked off the event loop; None when ready."""
        return await anyio.to_thread.run_sync(self._readiness_problem, limiter=self._check)

    def _readiness_problem(self) -> str | None:
        problem = self.writable_problem()
        if problem:
            return problem
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except SQLAlchemyError as exc:
            return str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return None

    def dispose(self) -> None:
        self.engine.dispose()

