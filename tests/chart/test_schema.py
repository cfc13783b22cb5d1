"""The chart's queue schema is generated from the pydantic QueueSpec, and the defaults a queue
leaves out are the TaskQueue CRD's (issue 15: the same constraints were written three times)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stalk_operator.defaults import TASKQUEUE_DEFAULTS
from stalk_workers.queues import QueueSpec

REPO = Path(__file__).resolve().parents[2]


def test_the_values_schema_is_generated_from_the_current_queue_spec():
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "chart_schema.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("field, crd_key", [("min_replicas", "minReplicas"), ("tasks_per_replica", "tasksPerReplica")])
def test_a_queue_table_default_is_the_crds(field, crd_key):
    # Local mode reads the queue table; the operator in a cluster gets the CRD's default.
    assert QueueSpec.model_fields[field].default == TASKQUEUE_DEFAULTS[crd_key]
