"""The operator-only install on the real node: the CRD and the operator from the kustomize install
(`kubectl apply -k k8s/`, or k8s/namespaced/), nothing else of stalk's, scaling a team's own workers.

The team (namespace ``tracker``, Pod Security "restricted") runs its own Celery app
(tests/fixtures/foreign_app.py, mounted from a ConfigMap as ``tracker_app``: its own name, a topic
exchange, ten priority lists, the key prefix ``tracker:``) in a worker Deployment at 0 replicas, on
stalk's image only because the node has no other with Celery. Its broker URL is in its own Secret and
points at a fresh database of the suite's Redis, through a socat forwarder on the node link. One
TaskQueue names the Deployment, the key prefix and the Secret. The test publishes with a plain Celery
client of that app and watches the operator pod scale the workers up, run every task, report the figures
in `kubectl get tq`, and scale back to zero.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.chart.conftest import restrict_pod_security
from tests.fixtures import foreign_app
from tests.fixtures.foreign_workers import error_lines
from tests.fixtures.kube import poll
from tests.fixtures.kustomize import CLUSTER_WIDE, NAMESPACED, REPO, render
from tests.fixtures.servers import fresh_redis_pair
from tests.node.conftest import real_node
from tests.node.test_external_services_on_real_node import forward_to_loopback

pytestmark = pytest.mark.cluster

TEAM = "tracker"
DEPLOYMENT = "tracker-issues"
TASKS = 12
TASK_SECONDS = 3
APP_LABELS = {"app.kubernetes.io/name": "tracker", "app.kubernetes.io/component": "issues-worker"}
OPERATOR = "app.kubernetes.io/name=stalk,app.kubernetes.io/component=operator"


def operator_install(real_cluster, variant: str) -> list[dict]:
    """The variant's objects as a user applies them, on the locally built image (no pull: the node has it)."""
    repository, tag = real_cluster.image("stalk")
    objects = render(variant, TEAM if variant == NAMESPACED else None)
    for o in objects:
        if o["kind"] == "Deployment":
            for container in o["spec"]["template"]["spec"]["containers"]:
                assert container["image"].startswith("stalk:"), container["image"]
                container.update(image=f"{repository}:{tag}", imagePullPolicy="Never")
                # Two operator replicas on a 2-core node beside the workers: smaller requests.
                container["resources"]["requests"] = {"cpu": "50m", "memory": "96Mi"}
    return objects


def team_objects(real_cluster, broker_url: str, backend_url: str) -> list[dict]:
    """The team's own: its app's code, its Secret, its worker Deployment at 0, and the one TaskQueue."""
    repository, tag = real_cluster.image("stalk")
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    worker = {
        "name": "worker", "image": f"{repository}:{tag}", "imagePullPolicy": "Never",
        # The team's command line: its app, its queue; a node name ending in the pod's (drain-safe
        # scale-down), a pool that answers inspection while it works.
        "command": ["celery", "-A", "tracker_app", "--result-backend", "$(TRACKER_RESULT_BACKEND)", "worker",
                    "-Q", "issues", "-n", "tracker-issues@%h", "-P", "threads", "-c", "2",
                    "--without-mingle", "--without-gossip", "-l", "INFO"],
        "env": [{"name": "PYTHONPATH", "value": "/opt/tracker"},
                {"name": "TRACKER_BROKER_URL", "valueFrom": {"secretKeyRef": {"name": "tracker-redis", "key": "url"}}},
                {"name": "TRACKER_RESULT_BACKEND",
                 "valueFrom": {"secretKeyRef": {"name": "tracker-redis", "key": "results"}}}],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
        "securityContext": restricted,
        "volumeMounts": [{"name": "app", "mountPath": "/opt/tracker", "readOnly": True}],
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tracker-app"},
         "data": {"tracker_app.py": (REPO / "tests" / "fixtures" / "foreign_app.py").read_text()}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tracker-redis"},
         "stringData": {"url": broker_url, "results": backend_url}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": DEPLOYMENT, "labels": APP_LABELS},
         "spec": {"replicas": 0, "selector": {"matchLabels": APP_LABELS},
                  "template": {"metadata": {"labels": APP_LABELS}, "spec": {
                      "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                          "seccompProfile": {"type": "RuntimeDefault"}},
                      "terminationGracePeriodSeconds": 30,
                      "containers": [worker],
                      "volumes": [{"name": "app", "configMap": {"name": "tracker-app"}}]}}}},
        {"apiVersion": "stalk.dev/v1alpha1", "kind": "TaskQueue", "metadata": {"name": "issues"},
         "spec": {"queue": "issues",
                  "broker": {"secretKeyRef": {"name": "tracker-redis", "key": "url"},
                             "keyPrefix": foreign_app.KEY_PREFIX},
                  "scaleTargetRef": {"kind": "Deployment", "name": DEPLOYMENT},
                  "minReplicas": 0, "maxReplicas": 3, "tasksPerReplica": 4,
                  # Short enough to watch the way back to zero within the test.
                  "scaleDown": {"stabilizationSeconds": 5, "idleReplicaSeconds": 5},
                  "idleSecondsBeforeZero": 5}},
    ]


def manifest(objects: list[dict]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})


def get_tq(real_cluster) -> dict[str, str]:
    """`kubectl get tq issues` as a user reads it: the printed table, column by column."""
    out = real_cluster.kubectl("get", "tq", "issues", namespace=TEAM).stdout.splitlines()
    header, row = out[0], out[1]
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    ends = starts[1:] + [None]
    return {header[s:e].strip(): row[s:e].strip() for s, e in zip(starts, ends, strict=True)}


def replicas(real_cluster) -> int:
    deployment = json.loads(real_cluster.kubectl("get", "deployment", DEPLOYMENT, "-o", "json", namespace=TEAM).stdout)
    return deployment["spec"]["replicas"]


def worker_logs(real_cluster) -> dict[str, str]:
    """Each running worker pod's whole log (read while the pods are there: a scaled-down pod's is gone)."""
    selector = ",".join(f"{k}={v}" for k, v in APP_LABELS.items())
    pods = json.loads(real_cluster.kubectl("get", "pods", "-l", selector, "-o", "json", namespace=TEAM).stdout)["items"]
    logs = {}
    for pod in pods:
        if pod["status"].get("phase") == "Running":
            got = real_cluster.kubectl("logs", pod["metadata"]["name"], namespace=TEAM, check=False)
            if got.returncode == 0:
                logs[pod["metadata"]["name"]] = got.stdout
    return logs


@pytest.mark.parametrize("variant", [CLUSTER_WIDE, NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_the_kustomize_installed_operator_scales_a_foreign_apps_workers_up_runs_every_task_and_back_to_zero(
        variant, real_cluster, redis_server):
    kubectl = real_cluster.kubectl
    broker, backend = fresh_redis_pair(redis_server)
    operator_ns = "stalk-system" if variant == CLUSTER_WIDE else TEAM
    started = time.monotonic()
    with forward_to_loopback(redis_server.port) as redis_port:
        here, there = f"127.0.0.1:{redis_server.port}", f"{real_node.HOST_IP}:{redis_port}"
        kubectl("create", "namespace", TEAM)
        restrict_pod_security(real_cluster, TEAM)
        install = operator_install(real_cluster, variant)
        team = team_objects(real_cluster, broker.replace(here, there), backend.replace(here, there))
        client = None
        try:
            # The CRD may be there already (the session's chart tests): take it over, as `kubectl apply` would.
            kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest(install))
            kubectl("rollout", "status", "deployment/stalk-operator", "--timeout=55s", namespace=operator_ns)
            kubectl("apply", "-f", "-", namespace=TEAM, input=manifest(team))
            print(f"operator ({variant}) and the team's objects up: {time.monotonic() - started:.1f}s")
            poll(lambda: get_tq(real_cluster)["STATUS"] == "Scaling", timeout=60, what="the TaskQueue Ready (Scaling)")

            # The team's producer: its own app, nothing of stalk's, on the suite's Redis directly.
            client = foreign_app.make_app(broker)
            client.conf.result_backend = backend
            foreign_app.declare_queues(client)
            results = [client.send_task("tracker.issues.enrich_issue", kwargs={"seconds": TASK_SECONDS})
                       for _ in range(TASKS)]

            seen: list[dict[str, str]] = []
            logs: dict[str, str] = {}
            most = 0

            def all_done() -> bool:
                nonlocal most
                seen.append(get_tq(real_cluster))
                most = max(most, replicas(real_cluster))
                logs.update(worker_logs(real_cluster))
                return all(r.ready() for r in results)

            poll(all_done, timeout=150, interval=1, what=f"the worker pods to run {TASKS} tasks")
            print(f"{TASKS} tasks run: {time.monotonic() - started:.1f}s, at most {most} replicas")
            assert [r.get(timeout=5) for r in results] == ["enriched"] * TASKS
            # 12 tasks at 4 per replica: the operator asked for more than one worker pod.
            assert most >= 2, most
            # The table showed the backlog and the tasks in flight, scaling.
            rows = [f"{row['WAITING']} waiting, {row['IN-FLIGHT']} in flight, {row['READY']}/{row['DESIRED']} "
                    f"replicas, {row['STATUS']}" for row in seen]
            print("kubectl get tq, once a second:", "; ".join(dict.fromkeys(rows)))
            assert any(row["STATUS"] == "Scaling" and row["WAITING"].isdigit() and int(row["WAITING"]) > 0
                       for row in seen), rows
            assert any(row["STATUS"] == "Scaling" and row["IN-FLIGHT"].isdigit() and int(row["IN-FLIGHT"]) > 0
                       for row in seen), rows
            # Every task ran on one of the team's worker pods, which logged no error.
            # (Celery logs a success just after storing its result: read the logs again, pods still run.)
            def all_logged() -> bool:
                logs.update(worker_logs(real_cluster))
                ran = "\n".join(logs.values())
                return all(f"[{r.id}] succeeded" in ran for r in results)

            poll(all_logged, timeout=10, interval=1, what=f"each task's success in a worker pod's log ({sorted(logs)})")
            errors = {pod: error_lines(text) for pod, text in logs.items()}
            assert not any(errors.values()), errors

            # Idle: back to zero after the short scale-down window and idle time.
            poll(lambda: replicas(real_cluster) == 0, timeout=90, what="the operator to scale back to zero")
            print(f"back to zero: {time.monotonic() - started:.1f}s")
            row = poll(lambda: (r := get_tq(real_cluster))["READY"] in ("0", "<none>") and r, timeout=30,
                       what="the TaskQueue's status at zero")
            assert row["WAITING"] == "0" and row["IN-FLIGHT"] == "0" and row["STATUS"] == "Scaling", row
            # The operator pod did it: its events on the TaskQueue, both ways.
            events = json.loads(kubectl("get", "events", "--field-selector", "involvedObject.kind=TaskQueue",
                                        "-o", "json", namespace=TEAM).stdout)["items"]
            reasons = {e["reason"] for e in events}
            assert {"ScaledUp", "ScaledDown"} <= reasons, reasons
            operator_logs = kubectl("logs", "-l", OPERATOR, "--tail=-1", "--prefix", namespace=operator_ns).stdout
            assert "Traceback" not in operator_logs, operator_logs[-3000:]
        finally:
            if client is not None:
                client.close()
            kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", namespace=TEAM, input=manifest(team))
            # All but the CRD (the session's, perhaps the chart's). The operator's pods must be gone before
            # another install's operator starts: two operators scaling one Deployment is no test.
            kubectl("delete", "--ignore-not-found", "--timeout=55s", "-f", "-",
                    input=manifest([o for o in install if o["kind"] != "CustomResourceDefinition"]))
            kubectl("delete", "namespace", TEAM, "--wait=true", "--timeout=55s")
