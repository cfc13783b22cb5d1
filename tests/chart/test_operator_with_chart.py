"""The real operator scales the chart's worker Deployments up and down, with nothing but the chart's
RBAC and its pod admission policy.

The chart is installed with Redis "external" (a real local Redis from tests/fixtures/servers.py,
its URL in a Secret), and `python -m stalk_operator` runs here as the chart's operator pod would:
authenticated as the chart's ServiceAccount (a token from the TokenRequest API), with the chart's
environment (watch namespace, Lease name). kwok's pods never run the operator themselves.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import urllib.request

import pytest
import redis
import yaml
from celery import Celery

from tests.chart.conftest import CHART, EXTERNAL_SECRET, IMAGE, RELEASE, SCENARIOS
from tests.fixtures.kube import poll
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.cluster

EXTERNAL = next(s for s in SCENARIOS if s.name.startswith("03-"))
QUEUE, TASKS, TASKS_PER_REPLICA = "classification", 50, 20  # the chart's default table: 20 per replica
# A scale-down within seconds instead of the default 60 s window.
FAST_SCALE_DOWN = ["--set", "workers.autoscaling.scaleDown.stabilizationSeconds=2",
                   "--set", "workers.autoscaling.scaleDown.idleReplicaSeconds=2"]
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def rendered_selector(kube, ns: str, deployment: str) -> dict[str, str]:
    d = json.loads(kube.kubectl("get", "deployment", deployment, "-o", "json", namespace=ns).stdout)
    return d["spec"]["selector"]["matchLabels"]


def service_account_kubeconfig(admin_kubeconfig, token: str, path) -> None:
    """A kubeconfig for the same API server that authenticates with a ServiceAccount token only."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": cluster["server"],
                                               "certificate-authority-data": cluster["certificate-authority-data"]}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
    }))


@pytest.mark.parametrize("mode", [[], ["--set", "operator.clusterWide=true"]], ids=["namespaced", "cluster-wide"])
def test_the_operator_with_the_charts_rbac_scales_a_chart_worker_deployment_from_redis(
        crds, helm_kube, kube_namespace, redis_urls, tmp_path, mode):
    """Cluster-wide, kopf reads no namespaces: its ClusterRole has none, and nothing may be refused."""
    ns, kube = kube_namespace, crds
    secret = json.loads(json.dumps(EXTERNAL_SECRET))
    secret["stringData"]["broker-url"], secret["stringData"]["result-backend-url"] = redis_urls
    kube.kubectl("apply", "-f", "-", namespace=ns, input=json.dumps(secret))
    helm_kube.run("install", RELEASE, str(CHART), "--namespace", ns, "-f", str(EXTERNAL), *IMAGE, *FAST_SCALE_DOWN, *mode,
                  "--wait", "--timeout", "180s")
    # The pod admission policy is on (the chart's default): the scale-down below goes through it.
    kube.kubectl("get", "validatingadmissionpolicy", f"{ns}-stalk-operator-pod-deletion-cost"[:63].rstrip("-"))
    deployment = f"stalk-worker-{QUEUE}"
    # A new autoscaled Deployment starts at its queue's minReplicas (the chart's default table: 0 for
    # classification), not at the API server's default of 1.
    assert json.loads(kube.kubectl("get", "deployment", deployment, "-o", "json", namespace=ns).stdout)["spec"]["replicas"] == 0

    # The operator container's environment, as the chart renders it.
    rendered = json.loads(kube.kubectl("get", "deployment", "stalk-operator", "-o", "json", namespace=ns).stdout)
    container = rendered["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env.get("STALK_WATCH_NAMESPACES", "") == ("" if mode else ns)  # the API server drops an empty value
    token = kube.kubectl("create", "token", rendered["spec"]["template"]["spec"]["serviceAccountName"],
                         "--duration=1h", namespace=ns).stdout.strip()
    kubeconfig = tmp_path / "operator.kubeconfig"
    service_account_kubeconfig(kube.kubeconfig, token, kubeconfig)
    port = free_port()
    log_path = tmp_path / "operator.log"
    environment = {**os.environ, "KUBECONFIG": str(kubeconfig), **env,
                   "STALK_OPERATOR_NAMESPACE": ns, "STALK_IDENTITY": "chart-operator-0",
                   "STALK_BROKER_URL": redis_urls[0], "STALK_METRICS_HOST": "127.0.0.1", "STALK_METRICS_PORT": str(port),
                   "STALK_STATUS_INTERVAL_SECONDS": "0"}
    with log_path.open("w") as log:
        operator = subprocess.Popen([sys.executable, "-m", "stalk_operator"], env=environment, cwd=tmp_path,
                                    stdout=log, stderr=subprocess.STDOUT)
    producer = Celery("producer", broker=redis_urls[0], set_as_current=False)
    try:
        def ready():
            assert operator.poll() is None, log_path.read_text()[-3000:]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                return resp.status == 200
        poll(ready, timeout=60, what="the operator ready")

        for _ in range(TASKS):
            producer.send_task("stalk.sleep", args=[0], queue=QUEUE)
        want = math.ceil(TASKS / TASKS_PER_REPLICA)

        def scaled():
            d = json.loads(kube.kubectl("get", "deployment", deployment, "-o", "json", namespace=ns).stdout)
            assert d["spec"]["replicas"] == want, f"replicas {d['spec']['replicas']}, want {want}"
            return True
        poll(scaled, timeout=60, what=f"{deployment} scaled to {want} by the operator")

        def status():
            tq = json.loads(kube.kubectl("get", "taskqueue", deployment, "-o", "json", namespace=ns).stdout)
            st = tq.get("status", {})
            assert st.get("waiting") == TASKS and st.get("desiredReplicas") == want, st
            return True
        poll(status, timeout=30, what="the TaskQueue's status written with the chart's RBAC")
        row = kube.kubectl("get", "taskqueue", deployment, "--no-headers", namespace=ns).stdout.split()
        assert row[1:3] == [QUEUE, str(TASKS)]

        # The chart's own upgrade leaves the operator's choice alone.
        helm_kube.run("upgrade", RELEASE, str(CHART), "--namespace", ns, "-f", str(EXTERNAL), *IMAGE, *FAST_SCALE_DOWN, *mode,
                      "--set", "config.logLevel=warning", "--wait", "--timeout", "180s")
        assert json.loads(kube.kubectl("get", "deployment", deployment, "-o", "json", namespace=ns).stdout)["spec"]["replicas"] == want

        # Scale-down: before it the operator sets each pod's deletion cost (no worker answers on kwok
        # pods: 0 for each), as the chart's ServiceAccount, through the chart's pod admission policy.
        redis.Redis.from_url(redis_urls[0]).delete(QUEUE)
        for _ in range(TASKS_PER_REPLICA // 2):
            producer.send_task("stalk.sleep", args=[0], queue=QUEUE)
        poll(lambda: json.loads(kube.kubectl("get", "deployment", deployment, "-o", "json", namespace=ns).stdout)
             ["spec"]["replicas"] == 1, timeout=60, what=f"{deployment} scaled down to 1")
        selector = ",".join(f"{k}={v}" for k, v in rendered_selector(kube, ns, deployment).items())
        pods = json.loads(kube.kubectl("get", "pods", "-l", selector, "-o", "json", namespace=ns).stdout)["items"]
        costs = {p["metadata"]["name"]: p["metadata"].get("annotations", {}).get(DELETION_COST) for p in pods}
        assert costs and set(costs.values()) == {"0"}, costs
    finally:
        producer.close()
        operator.terminate()
        try:
            operator.wait(20)
        except subprocess.TimeoutExpired:
            operator.kill()
        # The namespace goes with the test; the release's cluster roles and pod policy go with the release.
        helm_kube.run("uninstall", RELEASE, "--namespace", ns, check=False)
    log = log_path.read_text()
    assert "Forbidden" not in log and " 403" not in log and "Not enough permissions" not in log, log[-4000:]
