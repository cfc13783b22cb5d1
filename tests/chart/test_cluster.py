"""The chart against the real API server (tests/fixtures/kube.py): strict server-side dry-run of
every scenario, then one release's whole life: install, roll out on kwok nodes, TaskQueues,
an upgrade that changes the queue list without resetting the operator's replicas, uninstall.

kwok plays the kubelet: pods become Running and Ready, no container runs. So the stalk
processes, probes and the `helm test` pod do not execute here; everything the API server,
the controllers and helm decide does.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from tests.chart.conftest import (CHART, EXTERNAL_SECRET, IMAGE, RELEASE, SCENARIOS, restrict_pod_security,
                                  uninstall_leaves_only_the_crd)
from tests.fixtures.kube import poll

pytestmark = pytest.mark.cluster

SCENARIO_IDS = [p.name.removesuffix("-values.yaml") for p in SCENARIOS]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_every_rendered_object_is_accepted_by_the_api_server_with_strict_validation_and_restricted_pod_security(
        crds, helm_kube, kube_namespace, scenario):
    manifest = helm_kube.run("template", RELEASE, str(CHART), "--namespace", kube_namespace, "-f", str(scenario),
                             "--api-versions", "monitoring.coreos.com/v1").stdout
    kinds = {doc["kind"] for doc in yaml.safe_load_all(manifest) if doc}
    restrict_pod_security(crds, kube_namespace)
    proc = crds.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", namespace=kube_namespace,
                        input=manifest, check=False)
    assert proc.returncode == 0, proc.stderr
    # Strict validation turns unknown fields into errors; no warnings either (Pod Security "restricted" included).
    assert proc.stderr == "", proc.stderr
    accepted = proc.stdout.count("(server dry run)")
    assert accepted == sum(1 for doc in yaml.safe_load_all(manifest) if doc), proc.stdout
    if scenario.name.startswith("02-"):
        assert {"Ingress", "HorizontalPodAutoscaler", "ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds


def test_a_misspelt_field_is_rejected_by_the_api_server(crds, kube_namespace):
    # The check above is only as good as the server's strictness: prove it bites.
    bad = {"apiVersion": "stalk.dev/v1alpha1", "kind": "TaskQueue", "metadata": {"name": "x"},
           "spec": {"queue": "q", "broker": {"url": "redis://r:6379/0"}, "maxReplicas": 2, "minReplica": 1,
                    "scaleTargetRef": {"kind": "Deployment", "name": "x"}}}
    proc = crds.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", namespace=kube_namespace,
                        input=json.dumps(bad), check=False)
    assert proc.returncode != 0 and 'unknown field "spec.minReplica"' in proc.stderr


def _json(kube, *args, namespace):
    return json.loads(kube.kubectl(*args, "-o", "json", namespace=namespace).stdout)


def _worker_deployments(kube, namespace) -> dict[str, dict]:
    items = _json(kube, "get", "deployments", "-l", "app.kubernetes.io/component=worker", namespace=namespace)["items"]
    return {d["metadata"]["labels"]["stalk.dev/queue"]: d for d in items}


def _rolled_out(kube, namespace) -> bool:
    for d in _json(kube, "get", "deployments", namespace=namespace)["items"]:
        spec, status = d["spec"], d.get("status", {})
        if status.get("observedGeneration", 0) < d["metadata"]["generation"]:
            return False
        if status.get("updatedReplicas", 0) != spec["replicas"] or status.get("availableReplicas", 0) != spec["replicas"]:
            return False
        if status.get("replicas", 0) != spec["replicas"]:  # old ReplicaSets' pods gone
            return False
    return True


def test_install_upgrade_uninstall_keeps_the_operators_replicas_and_leaves_only_the_crd(crds, helm_kube, kube_namespace):
    ns, kube = kube_namespace, crds
    restrict_pod_security(kube, ns)
    # The test cluster has no storage provisioner: the claims of the StatefulSets (persistence is on by
    # default) bind to volumes made here for them, as an administrator would.
    volumes = [static_volume(ns, "data-stalk-redis-0", "1Gi"), static_volume(ns, "data-stalk-postgresql-0", "2Gi")]
    kube.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": volumes}))
    try:
        _lifecycle(helm_kube, kube, ns)
    finally:
        kube.kubectl("delete", "pv", *[v["metadata"]["name"] for v in volumes], "--wait=false", check=False)


def static_volume(namespace: str, claim: str, size: str) -> dict:
    """A PersistentVolume reserved (claimRef) for one claim of one namespace; kwok never mounts it."""
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"stalk-test-{hashlib.sha256(f'{namespace}/{claim}'.encode()).hexdigest()[:16]}",
                         "labels": {"stalk.test/namespace": namespace}},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/{namespace}/{claim}"},
                     "claimRef": {"namespace": namespace, "name": claim}}}


def _lifecycle(helm_kube, kube, ns):
    base = ["--namespace", ns, *IMAGE, "--wait", "--timeout", "180s"]

    # --- install: every Deployment and StatefulSet rolls out on the kwok nodes
    out = helm_kube.run("install", RELEASE, str(CHART), *base).stdout
    assert "STATUS: deployed" in out
    notes = out[out.index("NOTES:"):]
    for line in (f"kubectl -n {ns} get taskqueues", f"kubectl -n {ns} port-forward svc/stalk-api 8000:8000",
                 "stalk submit stalk.health_check --wait", f"helm test stalk -n {ns}",
                 f"kubectl -n {ns} logs deploy/stalk-recover"):
        assert line in notes
    poll(lambda: _rolled_out(kube, ns), timeout=120, what="every Deployment rolled out")
    deployments = {d["metadata"]["name"] for d in _json(kube, "get", "deployments", namespace=ns)["items"]}
    assert deployments == {"stalk-api", "stalk-operator", "stalk-recover", "stalk-worker-default",
                           "stalk-worker-classification", "stalk-worker-summarization", "stalk-worker-notifications"}
    statefulsets = _json(kube, "get", "statefulsets", namespace=ns)["items"]
    assert sorted((s["metadata"]["name"], s["status"].get("readyReplicas")) for s in statefulsets) == [
        ("stalk-postgresql", 1), ("stalk-redis", 1)]
    claims = _json(kube, "get", "pvc", namespace=ns)["items"]
    assert sorted((c["metadata"]["name"], c["status"]["phase"]) for c in claims) == [
        ("data-stalk-postgresql-0", "Bound"), ("data-stalk-redis-0", "Bound")]

    # --- kubectl get taskqueues: one per queue, with the CRD's columns
    table = kube.kubectl("get", "taskqueues", namespace=ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "QUEUE", "WAITING", "IN-FLIGHT", "OLDEST", "READY", "DESIRED", "MIN", "MAX",
                                "STATUS", "AGE"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert {name: row[1] for name, row in rows.items()} == {
        "stalk-worker-classification": "classification", "stalk-worker-default": "default",
        "stalk-worker-notifications": "notifications", "stalk-worker-summarization": "summarization"}
    # STATUS is blank until the operator has written a condition: cut the row by the header.
    row = next(line for line in table[1:] if line.startswith("stalk-worker-default "))
    assert row[table[0].index("MIN"):table[0].index("STATUS")].split() == ["1", "10"]  # MIN, MAX
    # The generated broker Secret holds the URL each TaskQueue points at.
    secret = _json(kube, "get", "secret", "stalk-redis", namespace=ns)
    assert set(secret["data"]) == {"password", "broker-url", "result-backend-url"}

    # --- the operator's choice (simulated through the scale subresource, as the operator does it)
    kube.kubectl("scale", "deployment/stalk-worker-classification", "--replicas=3", namespace=ns)
    kube.kubectl("scale", "deployment/stalk-worker-default", "--replicas=2", namespace=ns)
    poll(lambda: _rolled_out(kube, ns), timeout=120, what="the scaled workers rolled out")

    # --- upgrade: notifications goes, reports comes, and a setting changes every pod template
    upgrade = ["--set", "queues.notifications=null", "--set", "queues.reports.maxReplicas=3",
               "--set", "queues.reports.routes[0]=*.report*", "--set", "config.logLevel=warning"]
    password = secret["data"]["password"]
    helm_kube.run("upgrade", RELEASE, str(CHART), *base, *upgrade)
    poll(lambda: _rolled_out(kube, ns), timeout=120, what="every Deployment rolled out after the upgrade")
    workers = _worker_deployments(kube, ns)
    assert sorted(workers) == ["classification", "default", "reports", "summarization"]
    assert workers["classification"]["spec"]["replicas"] == 3, "helm upgrade reset the operator's replicas"
    assert workers["default"]["spec"]["replicas"] == 2, "helm upgrade reset the operator's replicas"
    assert workers["reports"]["spec"]["replicas"] == 0  # a new Deployment starts at its minReplicas, 0 here
    assert "warning" in workers["classification"]["spec"]["template"]["spec"]["containers"][0]["args"]
    queues = {t["spec"]["queue"]: t for t in _json(kube, "get", "taskqueues", namespace=ns)["items"]}
    assert sorted(queues) == ["classification", "default", "reports", "summarization"]
    assert queues["reports"]["spec"]["scaleTargetRef"]["name"] == "stalk-worker-reports"
    assert queues["reports"]["spec"]["maxReplicas"] == 3
    # Generated passwords survive upgrades (lookup), or every client would lose Redis.
    assert _json(kube, "get", "secret", "stalk-redis", namespace=ns)["data"]["password"] == password
    queue_table = _json(kube, "get", "configmap", "stalk-config", namespace=ns)["data"]["queues.yaml"]
    assert sorted(yaml.safe_load(queue_table)) == ["classification", "default", "reports", "summarization"]

    # --- uninstall: nothing of the release is left in the namespace (the volume claims included) or the
    # cluster; the CRD stays
    uninstall_leaves_only_the_crd(helm_kube, kube, ns)


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if not s.name.startswith("01-")],
                         ids=[i for i in SCENARIO_IDS if not i.startswith("01-")])
def test_each_scenario_installs_rolls_out_and_uninstalls_cleanly(crds, helm_kube, kube_namespace, scenario):
    ns, kube = kube_namespace, crds
    restrict_pod_security(kube, ns)
    keep = set()
    if scenario.name.startswith("03-"):  # the Secret an external-services user creates first
        kube.kubectl("apply", "-f", "-", namespace=ns, input=json.dumps(EXTERNAL_SECRET))
        keep.add(("Secret", "stalk-external"))
    out = helm_kube.run("install", RELEASE, str(CHART), "--namespace", ns, "-f", str(scenario), *IMAGE,
                        "--set", "redis.persistence.enabled=false", "--set", "postgresql.persistence.enabled=false",
                        "--wait", "--timeout", "180s").stdout
    assert "STATUS: deployed" in out
    poll(lambda: _rolled_out(kube, ns), timeout=120, what="every Deployment rolled out")
    manifest = [d for d in yaml.safe_load_all(helm_kube.run("get", "manifest", RELEASE, "--namespace", ns).stdout) if d]
    expected_queues = sorted(d["spec"]["queue"] for d in manifest if d["kind"] == "TaskQueue")
    live_queues = sorted(t["spec"]["queue"] for t in _json(kube, "get", "taskqueues", namespace=ns)["items"])
    assert live_queues == expected_queues
    kinds = {d["kind"] for d in manifest}
    if scenario.name.startswith("02-"):  # the monitoring CRDs are served, so the chart created its objects
        assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Ingress", "HorizontalPodAutoscaler"} <= kinds
        assert live_queues == ["default", "gpu_jobs.v2"]
    if scenario.name.startswith("04-"):
        assert live_queues == [] and "ClusterRole" in kinds
        workers = _worker_deployments(kube, ns)
        assert {q: d["spec"]["replicas"] for q, d in workers.items()} == {
            "default": 1, "classification": 1, "summarization": 1, "notifications": 1}
    if scenario.name.startswith("03-"):  # rotating a user-managed Secret, then upgrading, restarts its readers
        def api_checksum():
            d = _json(kube, "get", "deployment", "stalk-api", namespace=ns)
            return d["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"]
        before = api_checksum()
        rotated = json.loads(json.dumps(EXTERNAL_SECRET))
        rotated["stringData"]["api-tokens"] = "rotated-token\n"
        kube.kubectl("apply", "-f", "-", namespace=ns, input=json.dumps(rotated))
        helm_kube.run("upgrade", RELEASE, str(CHART), "--namespace", ns, "-f", str(scenario), *IMAGE,
                      "--wait", "--timeout", "180s")
        assert api_checksum() != before
    uninstall_leaves_only_the_crd(helm_kube, kube, ns, keep)
