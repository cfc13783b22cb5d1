"""How big ``stalk dev``'s workers get on this machine: the queue table sizes pods for a cluster
(1..10 workers x 4 processes on ``default``), which on a 2-core laptop meant 55 processes and
~4.7 GB. Locally, a prefork worker runs at most one process per CPU, a queue has at most one
worker per CPU, and all queues at their maximum fit in half the memory.

``size_for_machine`` is pure (CPUs and memory are arguments); ``this_machine`` reads them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from stalk_workers.queues import QueueSpec

# One Celery worker process, main or prefork child, with stalk's app loaded: 55 took ~4.7 GB.
WORKER_PROCESS_BYTES = 90 * 2**20
# The share of memory all queues' workers at their maximum may take; the rest is the user's.
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class Machine:
    cpus: int
    memory_bytes: int


def this_machine() -> Machine:
    """The CPUs this process may run on and the physical memory."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Machine(cpus=cpus, memory_bytes=os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def processes_per_worker(queue: QueueSpec) -> int:
    # A prefork worker is its main process plus one child per slot; threads and solo run in one.
    return 1 + queue.concurrency if queue.pool == "prefork" else 1


def size_for_machine(queues: Sequence[QueueSpec], machine: Machine) -> tuple[QueueSpec, ...]:
    """The queue table with concurrency and maximum workers no larger than the machine can carry;
    never below a queue's minimum, never above what the table says."""
    sized = [q.model_copy(update={"concurrency": min(q.concurrency, machine.cpus)}) if q.pool == "prefork" else q
             for q in queues]
    # Every queue at its maximum at once: that many processes fit in the memory share.
    memory_processes = int(machine.memory_bytes * MEMORY_SHARE // WORKER_PROCESS_BYTES)
    per_queue = memory_processes // max(1, len(sized))
    return tuple(
        q.model_copy(update={"max_replicas": max(q.min_replicas, 1, min(
            q.max_replicas, machine.cpus, per_queue // processes_per_worker(q)))})
        for q in sized
    )


def describe(queues: Sequence[QueueSpec]) -> str:
    """``default 1..2 workers x 2 prefork, ...; at most N worker processes``: what stalk dev says at start."""
    most = sum(q.max_replicas * processes_per_worker(q) for q in queues)
    return (", ".join(f"{q.name} {q.min_replicas}..{q.max_replicas} workers x {q.concurrency} {q.pool}"
                      for q in queues) + f"; at most {most} worker processes")
