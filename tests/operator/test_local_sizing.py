"""stalk dev sizes workers for the machine: never more than it can carry, nor than the queue table says."""

from __future__ import annotations

import pytest

from stalk_operator.local_sizing import Machine, describe, size_for_machine
from stalk_workers.queues import BUILTIN_QUEUES, QueueSpec

GIB = 2**30

CASES = [
    # (name, queue, machine, expected (concurrency, max_replicas))
    ("a prefork worker runs one process per CPU", QueueSpec(name="default", concurrency=4), Machine(2, 16 * GIB), (2, 2)),
    ("a queue has one worker per CPU at most", QueueSpec(name="default", max_replicas=10), Machine(4, 16 * GIB), (2, 4)),
    ("never above the table", QueueSpec(name="default", concurrency=2, max_replicas=3), Machine(64, 512 * GIB), (2, 3)),
    ("threads stay one process of many threads", QueueSpec(name="default", pool="threads", concurrency=8),
     Machine(2, 16 * GIB), (8, 2)),
    ("little memory: fewer workers", QueueSpec(name="default", concurrency=2), Machine(8, 1 * GIB), (2, 1)),
    ("never below the minimum", QueueSpec(name="default", min_replicas=3, max_replicas=5), Machine(1, 1 * GIB), (1, 3)),
]


@pytest.mark.parametrize(("queue", "machine", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_sizing_rules(queue, machine, expected):
    (sized,) = size_for_machine([queue], machine)
    assert (sized.concurrency, sized.max_replicas) == expected
    assert (sized.name, sized.routes, sized.min_replicas, sized.pool) == (queue.name, queue.routes, queue.min_replicas,
                                                                           queue.pool)


def test_the_built_in_table_on_a_two_core_laptop_is_20_processes_not_120():
    sized = size_for_machine(BUILTIN_QUEUES, Machine(cpus=2, memory_bytes=8 * GIB))
    assert describe(sized) == ("default 1..2 workers x 2 prefork, classification 0..2 workers x 2 prefork, "
                               "summarization 0..2 workers x 2 prefork, notifications 0..2 workers x 8 threads; "
                               "at most 20 worker processes")
    assert describe(BUILTIN_QUEUES).endswith("at most 120 worker processes")
