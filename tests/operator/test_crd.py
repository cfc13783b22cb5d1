"""The TaskQueue CRD on a real API server: it applies, defaults, validates and prints."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.operator.conftest import REPO, taskqueue

pytestmark = pytest.mark.cluster


def apply(kube_cluster, namespace, obj, check=True):
    return kube_cluster.kubectl("apply", "-f", "-", namespace=namespace, input=yaml.safe_dump(obj), check=check)


def test_crd_is_established_with_short_name(kube_cluster, taskqueue_crd):
    out = kube_cluster.kubectl("api-resources", "--api-group=stalk.dev", "-o", "wide").stdout
    assert "taskqueues" in out and "tq" in out and "TaskQueue" in out


def test_defaults_are_filled_in_by_the_api_server(kube_cluster, taskqueue_crd, kube_namespace):
    apply(kube_cluster, kube_namespace, taskqueue("emails", queue="emails", broker_url="redis://r:6379/0",
                                                  target="w", maxReplicas=3))
    obj = json.loads(kube_cluster.kubectl("get", "tq", "emails", "-o", "json", namespace=kube_namespace).stdout)
    spec = obj["spec"]
    assert spec["minReplicas"] == 0 and spec["pollSeconds"] == 1 and spec["drain"] is True
    assert spec["scaleDown"] == {"stabilizationSeconds": 45, "idleReplicaSeconds": 10} and spec["scaleUp"] == {"stabilizationSeconds": 0}
    assert spec["broker"]["keyPrefix"] == "" and spec["scaleTargetRef"]["apiVersion"] == "apps/v1"


def test_example_applies(kube_cluster, taskqueue_crd, kube_namespace):
    kube_cluster.kubectl("apply", "-f", str(REPO / "k8s" / "examples" / "taskqueue.yaml"), namespace=kube_namespace)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(minReplicas=5, maxReplicas=2), "minReplicas must be less than or equal to maxReplicas"),
        (lambda s: s["broker"].update(secretKeyRef={"name": "redis", "key": "url"}),
         "broker needs exactly one of url or secretKeyRef"),
        (lambda s: s.update(broker={"keyPrefix": "x"}), "broker needs exactly one of url or secretKeyRef"),
        (lambda s: s["broker"].update(url="http://redis:6379"), "broker.url must be a Redis URL"),
        (lambda s: s["scaleTargetRef"].update(apiVersion="apps/v1beta1"), "scaleTargetRef.apiVersion must be apps/v1"),
        (lambda s: s["scaleTargetRef"].update(kind="ReplicaSet"), 'supported values: "Deployment", "StatefulSet"'),
        (lambda s: s.update(scaleUp={"maxStep": 50}), "scaleUp.maxStep cannot be larger than maxReplicas"),
        (lambda s: s.update(tasksPerReplica=0), "should be greater than or equal to 1"),
        (lambda s: s.pop("maxReplicas"), "maxReplicas: Required value"),
    ],
    ids=["min-above-max", "both-url-and-secret", "neither-url-nor-secret", "not-a-redis-url", "old-api-version",
         "unsupported-kind", "step-above-max", "zero-tasks-per-replica", "max-required"],
)
def test_invalid_taskqueue_is_rejected_with_a_message(kube_cluster, taskqueue_crd, kube_namespace, change, message):
    obj = taskqueue("bad", queue="q", broker_url="redis://r:6379/0", target="w", maxReplicas=10)
    change(obj["spec"])
    result = apply(kube_cluster, kube_namespace, obj, check=False)
    assert result.returncode != 0, "the API server accepted an invalid TaskQueue"
    assert message in result.stderr, result.stderr


def test_get_taskqueues_prints_the_columns(kube_cluster, taskqueue_crd, kube_namespace):
    apply(kube_cluster, kube_namespace, taskqueue("emails", queue="emails", broker_url="redis://r:6379/0",
                                                  target="w", minReplicas=1, maxReplicas=7))
    lines = kube_cluster.kubectl("get", "taskqueues", namespace=kube_namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "QUEUE", "WAITING", "IN-FLIGHT", "OLDEST", "READY", "DESIRED", "MIN", "MAX",
                                "STATUS", "AGE"]
    # Cells without a value yet (no status before an operator runs) print as blanks: cut by the header.
    starts = [lines[0].index(name) for name in ("QUEUE", "MIN", "MAX", "STATUS")]
    row = lines[1]
    assert row[starts[0]:starts[1]].split() == ["emails"]
    assert row[starts[1]:starts[2]].strip() == "1" and row[starts[2]:starts[3]].strip() == "7"


def test_the_waiting_column_reads_status_waiting_not_the_deprecated_depth(kube_cluster, taskqueue_crd,
                                                                          kube_namespace):
    apply(kube_cluster, kube_namespace, taskqueue("emails", queue="emails", broker_url="redis://r:6379/0",
                                                  target="w", maxReplicas=7))
    kube_cluster.kubectl("patch", "tq", "emails", "--subresource=status", "--type=merge",
                         "-p", json.dumps({"status": {"waiting": 7, "depth": 99}}), namespace=kube_namespace)
    lines = kube_cluster.kubectl("get", "taskqueues", namespace=kube_namespace).stdout.splitlines()
    start, end = lines[0].index("WAITING"), lines[0].index("IN-FLIGHT")
    assert lines[1][start:end].strip() == "7"


def test_kubectl_describe_prints_the_policy_history_with_times_people_read(kube_cluster, taskqueue_crd,
                                                                          kube_namespace):
    from stalk_operator.policy import History

    apply(kube_cluster, kube_namespace, taskqueue("emails", queue="emails", broker_url="redis://r:6379/0",
                                                  target="w", maxReplicas=7))
    history = History(recommendations=[(1_796_195_910.5, 2)], idle_since=None, last_decision_at=1_796_195_913.0)
    kube_cluster.kubectl("patch", "tq", "emails", "--subresource=status", "--type=merge",
                         "-p", json.dumps({"status": {"policyHistory": history.to_dict()}}), namespace=kube_namespace)
    out = kube_cluster.kubectl("describe", "tq", "emails", namespace=kube_namespace).stdout
    described = out[out.index("Policy History:"):]
    assert re.search(r"Last Decision At:\s+2026-12-02T07:18:33.000Z", described), described
    assert re.search(r"Replicas:\s+2\s+Time:\s+2026-12-02T07:18:30.500Z", described), described
    assert "e+09" not in out and "1796195" not in out  # no raw Unix seconds


def _field_paths(node: dict, path: str = "") -> list[str]:
    paths = []
    for name, sub in (node.get("properties") or {}).items():
        paths.append(f"{path}.{name}")
        paths += _field_paths(sub.get("items", sub), f"{path}.{name}")
    return paths


def test_kubectl_explain_describes_every_field_of_spec_and_status(kube_cluster, taskqueue_crd):
    import yaml

    schema = yaml.safe_load(taskqueue_crd.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    fields = [p for p in _field_paths(schema) if p.startswith((".spec", ".status"))]
    assert len(fields) > 30
    undescribed = []
    for field in fields:
        out = kube_cluster.kubectl("explain", f"taskqueue{field}").stdout
        # kubectl explain prints DESCRIPTION: and then the text, or <empty> when there is none.
        text = out.split("DESCRIPTION:", 1)[1].split("FIELDS:", 1)[0].strip() if "DESCRIPTION:" in out else ""
        if not text or text == "<empty>":
            undescribed.append(field)
    assert undescribed == []
