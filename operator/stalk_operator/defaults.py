"""The TaskQueue defaults, as the CRD states them (k8s/crd/taskqueues.stalk.dev.yaml is the source).

The API server fills these in; the code needs them for objects that did not pass through it and
for the policy's own defaults. tests/operator/test_spec.py proves every value here is the CRD's,
and that the chart's values.yaml (workers.autoscaling) says the same.
"""

from __future__ import annotations

from typing import Any

TASKQUEUE_DEFAULTS: dict[str, Any] = {
    "minReplicas": 0,
    "tasksPerReplica": 10,
    "activationTasks": 0,
    "scaleUp.stabilizationSeconds": 0,
    "scaleDown.stabilizationSeconds": 45,
    "scaleDown.idleReplicaSeconds": 10,
    "idleSecondsBeforeZero": 120,
    "pollSeconds": 1,
    "paused": False,
    "drain": True,
    "broker.keyPrefix": "",
    "broker.tls.caSecretRef.key": "ca.crt",
    "broker.tls.certReqs": "required",
    "scaleTargetRef.apiVersion": "apps/v1",
}
