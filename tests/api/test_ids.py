"""Task ids are time-ordered UUIDs (v7), delivery tags random ones (v4)."""

from __future__ import annotations

import time
import uuid

from stalk_api.ids import new_task_ids, uuid4_strings


def test_task_ids_are_distinct_ascending_version_7_uuids_of_now():
    before = time.time_ns() // 1_000_000
    ids = new_task_ids(2000)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 2000 and ids == sorted(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 7, uuid.RFC_4122)
        assert before <= parsed.int >> 80 <= after  # the first 48 bits: Unix time in ms


def test_later_batches_sort_after_earlier_ones():
    first = new_task_ids(10)
    time.sleep(0.002)
    assert max(first) < min(new_task_ids(10))


def test_delivery_tags_are_distinct_version_4_uuids():
    tags = uuid4_strings(2000)
    assert len(set(tags)) == 2000
    for text in tags:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
