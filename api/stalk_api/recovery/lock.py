"""The recoverer's lock: exactly one recoverer acts, for as long as its pass lasts.

A Redis lock with an expiry (so a dead recoverer frees it), renewed by a thread every third of
its expiry while the pass runs: a pass that runs past the expiry (a slow inspection, a slow
database, 500 publishes) keeps it, so no second recoverer starts acting beside it. The pass asks
``held()`` before each publish; it answers from memory: False once a renewal found the lock taken
(expired while Redis or this process stalled, or Redis lost it), or when no renewal has confirmed
it for two thirds of the expiry (Redis unreachable), which leaves a third of the expiry for the
publish in hand to end before anyone else can hold the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.exceptions import LockNotOwnedError

log = logging.getLogger(__name__)

# Renewals per expiry: one late or failed renewal still leaves the lock held.
RENEWALS_PER_EXPIRY = 3


class PassLock:
    """``with PassLock(...) as lock:`` once ``acquire()`` returned True; ``held()`` before acting."""

    def __init__(self, client: redis.Redis, name: str, *, seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # thread_local=False: the renewing thread must see the token the pass's thread acquired with.
        self._lock = client.lock(name, timeout=seconds, blocking=False, thread_local=False)
        self.seconds, self._clock = seconds, clock
        self._confirmed_at = float("-inf")  # when Redis last confirmed we hold it (taken before asking)
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> bool:
        started = self._clock()
        if not self._lock.acquire():
            return False
        self._confirmed_at = started
        return True

    def held(self) -> bool:
        """Whether the pass may still act: confirmed recently enough, and never found taken."""
        recent = self._clock() - self._confirmed_at < self.seconds * (RENEWALS_PER_EXPIRY - 1) / RENEWALS_PER_EXPIRY
        return recent and not self._lost.is_set()

    def __enter__(self) -> PassLock:
        self._renewer = threading.Thread(target=self._renew, name="stalk-recover-lock", daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self._lost.is_set():
            return
        try:
            self._lock.release()
        except LockNotOwnedError:  # it expired after the last renewal: nothing left to free
            pass
        except redis.RedisError as exc:  # it expires by itself
            log.warning("could not release the recoverer's lock (it expires within %g s): %s", self.seconds, exc)

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / RENEWALS_PER_EXPIRY):
            asked = self._clock()
            try:
                self._lock.reacquire()  # back to the full expiry, only if our token is still there
            except LockNotOwnedError:
                log.warning("the recoverer's lock expired or was taken during a pass: this pass stops publishing")
                self._lost.set()
                return
            except redis.RedisError as exc:  # held() turns False if this goes on; the next renewal may work
                log.warning("could not renew the recoverer's lock: %s", exc)
                continue
            self._confirmed_at = asked
