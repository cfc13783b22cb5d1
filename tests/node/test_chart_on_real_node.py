"""The chart on a real node: stalk's own image in real pods, as a user installs it.

One release for the module (installing takes most of a minute), and the tests in the order a
user meets it: install and `helm test`, tasks through `kubectl port-forward`, metrics, the
hardening in practice, the in-cluster operator scaling workers that really consume, a worker
pod deleted mid-task, and uninstall.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.chart.conftest import CHART, restrict_pod_security, uninstall_leaves_only_the_crd
from tests.fixtures.kube import poll

pytestmark = pytest.mark.cluster

VALUES = Path(__file__).parent / "fixtures" / "real-node-values.yaml"
NAMESPACE = "stalk-real"
RELEASE = "stalk"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Release:
    namespace: str
    token: str
    redis_password: str
    values: list[str]

    def kubectl(self, cluster, *args, check=True):
        return cluster.kubectl(*args, namespace=self.namespace, check=check)


def _json(cluster, *args, namespace=NAMESPACE):
    return json.loads(cluster.kubectl(*args, "-o", "json", namespace=namespace).stdout)


def _secret(cluster, name, key):
    return base64.b64decode(_json(cluster, "get", "secret", name)["data"][key]).decode().splitlines()[0]


def _image_values(real_cluster) -> list[str]:
    sets = []
    for value, image in (("image", "stalk"), ("redis.image", "redis"), ("postgresql.image", "postgres")):
        repository, tag = real_cluster.image(image)
        sets += ["--set", f"{value}.repository={repository}", "--set", f"{value}.tag={tag}",
                 # The node has every image it needs; a pull would mean a wrong reference.
                 "--set", f"{value}.pullPolicy=Never"]
    return sets


@pytest.fixture(scope="module")
def release(real_cluster, node_helm) -> Release:
    real_cluster.kubectl("create", "namespace", NAMESPACE)
    restrict_pod_security(real_cluster, NAMESPACE)
    values = ["-f", str(VALUES), *_image_values(real_cluster)]
    started = time.monotonic()
    node_helm.run("install", RELEASE, str(CHART), "--namespace", NAMESPACE, *values,
                  "--wait", "--wait-for-jobs", "--timeout", "300s", timeout=330)
    print(f"helm install --wait on the real node: {time.monotonic() - started:.1f}s")
    return Release(namespace=NAMESPACE, token=_secret(real_cluster, "stalk-api-tokens", "tokens"),
                   redis_password=_secret(real_cluster, "stalk-redis", "password"), values=values)


def _pods(cluster, selector=None):
    args = ["get", "pods"] + (["-l", selector] if selector else [])
    return _json(cluster, *args)["items"]


def _running_pod(cluster, selector) -> str:
    """A Ready pod that is not terminating (a worker the operator scaled away may linger as Succeeded)."""
    def pick():
        return next((p["metadata"]["name"] for p in _pods(cluster, selector)
                     if p["status"]["phase"] == "Running" and not p["metadata"].get("deletionTimestamp") and _ready(p)),
                    None)
    return poll(pick, timeout=60, what=f"a Ready pod with {selector}")


def _ready(pod) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def _api(port, token):
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                        timeout=30)


def test_every_pod_runs_the_migrations_finish_and_helm_test_passes(real_cluster, node_helm, release):
    pods = _pods(real_cluster)
    components = {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in pods}
    assert {"api", "worker", "operator", "recover", "redis", "postgresql"} <= components, components
    for pod in pods:
        assert pod["status"]["phase"] in ("Running", "Succeeded"), (pod["metadata"]["name"], pod["status"])
        if pod["status"]["phase"] == "Running":
            assert _ready(pod), pod["metadata"]["name"]
            # Real containers: the kubelet reports the image it ran and a container id from containerd.
            for status in pod["status"]["containerStatuses"]:
                assert status["containerID"].startswith("containerd://"), status
    # The API's migrations ran to completion in its init container before the API started.
    api = _pods(real_cluster, "app.kubernetes.io/component=api")[0]
    inits = {s["name"]: s for s in api["status"].get("initContainerStatuses") or []}
    assert inits and all(s["state"].get("terminated", {}).get("exitCode") == 0 for s in inits.values()), inits
    out = node_helm.run("test", RELEASE, "--namespace", NAMESPACE, "--timeout", "180s", timeout=200).stdout
    assert "Phase:          Succeeded" in out, out


def test_tasks_submitted_through_a_port_forward_run_on_worker_pods(real_cluster, release):
    worker_pods = {p["metadata"]["name"] for p in _pods(real_cluster, "stalk.dev/queue=default")}
    with real_cluster.port_forward("svc/stalk-api", 8000, NAMESPACE) as port, _api(port, release.token) as api:
        assert api.get("/healthz").status_code == 200
        assert api.get("/readyz").status_code == 200
        submitted = api.post("/v1/tasks/batch", json={"tasks": [
            {"task": "stalk.echo", "args": [i]} for i in range(20)] + [{"task": "stalk.health_check"}]})
        assert submitted.status_code == 202, submitted.text
        ids = [t["task_id"] for t in submitted.json()["tasks"]]

        def finished():
            tasks = [api.get(f"/v1/tasks/{i}").json() for i in ids]
            return tasks if all(t["status"] == "SUCCESS" for t in tasks) else None

        tasks = poll(finished, timeout=90, what="21 tasks to reach SUCCESS on the worker pods")
        assert [t["result"]["args"] for t in tasks[:20]] == [[i] for i in range(20)]
        # Celery names a worker after its host, and a pod's host name is the pod's name.
        assert {t["worker"].split("@", 1)[1] for t in tasks} <= worker_pods, (tasks[0]["worker"], worker_pods)

        # The CLI over the same forward: the queues it shows come from the cluster's Redis.
        env = dict(os.environ, STALK_API_URL=f"http://127.0.0.1:{port}", STALK_API_TOKEN=release.token)
        out = subprocess.run([str(REPO / ".venv" / "bin" / "stalk"), "queues", "--json"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        queues = {q["name"]: q for q in json.loads(out.stdout)["queues"]}
        assert {"default", "classification", "summarization", "notifications"} <= set(queues)
        assert queues["default"]["workers"] >= 1


def _scrape(real_cluster, target, port):
    with real_cluster.port_forward(target, port, NAMESPACE) as local:
        response = httpx.get(f"http://127.0.0.1:{local}/metrics", timeout=30)
    assert response.status_code == 200, (target, response.status_code)
    return response.text


def test_the_api_a_worker_pod_the_operator_pod_and_the_recoverer_serve_metrics(real_cluster, release):
    worker = _running_pod(real_cluster, "stalk.dev/queue=default")
    operator = _running_pod(real_cluster, "app.kubernetes.io/component=operator")
    try:
        recover = _running_pod(real_cluster, "app.kubernetes.io/component=recover")
    except AssertionError as exc:  # say why: its last run's log and the pod's state
        selector = "app.kubernetes.io/component=recover"
        logs = real_cluster.kubectl("logs", "-l", selector, "--previous", "--tail", "40", namespace=NAMESPACE,
                                    check=False)
        state = [p["status"] for p in _pods(real_cluster, selector)]
        raise AssertionError(f"{exc}\n{state}\n{logs.stdout}{logs.stderr}") from None
    assert "stalk_api_requests_total" in _scrape(real_cluster, "svc/stalk-api", 8000)
    assert "stalk_worker_" in _scrape(real_cluster, f"pod/{worker}", 9818)
    assert 'stalk_taskqueue_waiting{' in _scrape(real_cluster, f"pod/{operator}", 8090)
    # Started before PostgreSQL or the migrations, it warns per pass instead of crashing.
    logs = real_cluster.kubectl("logs", f"pod/{recover}", namespace=NAMESPACE, check=False)
    (status,) = _json(real_cluster, "get", "pod", recover)["status"]["containerStatuses"]
    assert status["restartCount"] == 0 and "Traceback" not in logs.stdout, (status, logs.stdout, logs.stderr)
    metrics = poll(lambda: _scrape(real_cluster, f"pod/{recover}", 9819), timeout=60,
                   what=f"the recoverer's /metrics ({status}, {logs.stdout[-2000:]})")
    assert 'stalk_recover_tasks_recovered_total{queue="default"} 0.0' in metrics


def _exec(real_cluster, pod, *argv, container=None):
    args = ["exec", pod] + (["-c", container] if container else []) + ["--", *argv]
    return real_cluster.kubectl(*args, namespace=NAMESPACE, check=False)


def test_processes_run_as_uid_10001_with_a_read_only_root_filesystem(real_cluster, release):
    for component in ("api", "worker", "operator", "recover"):
        pod = _running_pod(real_cluster, f"app.kubernetes.io/component={component}")
        ids = _exec(real_cluster, pod, "id", "-u")
        assert ids.stdout.strip() == "10001", (component, ids.stdout, ids.stderr)
        denied = _exec(real_cluster, pod, "sh", "-c", "echo x > /opt/stalk/written")
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr, (component, denied)
        allowed = _exec(real_cluster, pod, "sh", "-c", "echo x > /tmp/written && cat /tmp/written")
        assert allowed.returncode == 0 and allowed.stdout.strip() == "x", (component, allowed)


def test_no_process_shows_a_password_on_its_command_line(real_cluster, release):
    """Command lines are world-readable (ps, /proc/PID/cmdline): Redis takes its password from a file
    in memory, and every stalk process reads its broker URL from the environment."""
    pods = [_running_pod(real_cluster, f"app.kubernetes.io/component={c}") for c in ("redis", "api", "worker")]
    for pod in pods:
        lines = _exec(real_cluster, pod, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
        assert lines.returncode == 0 and lines.stdout.strip(), (pod, lines)
        assert release.redis_password not in lines.stdout, f"{pod}: the Redis password on a command line"
    # And Redis does require it.
    refused = _exec(real_cluster, pods[0], "env", "-u", "REDISCLI_AUTH", "redis-cli", "ping")
    assert "NOAUTH" in refused.stdout + refused.stderr, refused


def _celery_client(port, password):
    """A plain Celery client, as another service of the user's would be: no stalk code."""
    from celery import Celery

    return Celery("plain-client", broker=f"redis://:{password}@127.0.0.1:{port}/0")


def _replicas(real_cluster, deployment):
    return _json(real_cluster, "get", "deployment", deployment)["spec"]["replicas"]


def test_the_in_cluster_operator_scales_real_workers_from_zero_and_back(real_cluster, release):
    deployment = "stalk-worker-classification"
    poll(lambda: _replicas(real_cluster, deployment) == 0, timeout=60, what=f"{deployment} at zero replicas")
    with real_cluster.port_forward("svc/stalk-redis", 6379, NAMESPACE) as port:
        client = _celery_client(port, release.redis_password)
        for _ in range(12):
            client.send_task("stalk.sleep", args=[2], queue="classification")
        client.close()

        # 12 waiting at 4 per replica: the operator asks for 3 (its maximum here) within seconds.
        poll(lambda: _replicas(real_cluster, deployment) >= 2, timeout=60, what="the operator to scale up")

        def consumed():
            import redis

            r = redis.Redis(host="127.0.0.1", port=port, password=release.redis_password)
            try:
                return r.llen("classification") == 0 and r.hlen("unacked") == 0
            finally:
                r.close()

        poll(consumed, timeout=180, what="the worker pods to consume the burst")
    running = [p for p in _pods(real_cluster, "stalk.dev/queue=classification") if p["status"]["phase"] == "Running"]
    assert running, "no classification worker pod ran"
    # Nothing waits: after the scale-down window and idle time the operator goes back to zero.
    poll(lambda: _replicas(real_cluster, deployment) == 0, timeout=120, what="the operator to scale back to zero")
    status = _json(real_cluster, "get", "taskqueue", deployment)["status"]
    assert status["replicas"] == 0 and status["waiting"] == 0, status


def test_a_worker_pod_deleted_mid_task_finishes_it_first_and_a_force_deleted_one_has_it_redelivered(
        real_cluster, release):
    with real_cluster.port_forward("svc/stalk-api", 8000, NAMESPACE) as port, _api(port, release.token) as api:
        def submit(seconds):
            answer = api.post("/v1/tasks", json={"task": "stalk.sleep", "args": [seconds]})
            assert answer.status_code == 202, answer.text
            return answer.json()["task_id"]

        def running(task_id):
            task = api.get(f"/v1/tasks/{task_id}").json()
            return task if task["status"] == "STARTED" and task["worker"] else None

        # A graceful delete (the pod's grace period) is a warm shutdown: the task finishes.
        graceful = submit(8)
        pod = poll(lambda: running(graceful), timeout=60, what="the task to start")["worker"].split("@", 1)[1]
        real_cluster.kubectl("delete", "pod", pod, "--wait=false", namespace=NAMESPACE)
        done = poll(lambda: (t := api.get(f"/v1/tasks/{graceful}").json())["status"] in ("SUCCESS", "FAILURE") and t,
                    timeout=90, what="the task on the deleted pod to finish")
        assert done["status"] == "SUCCESS" and done["retries"] == 0 and done["worker"].endswith(pod), done

        # A force delete kills the worker: the message was never acknowledged (acks late), so
        # Redis delivers it again after the visibility timeout and another worker runs it.
        forced = submit(6)
        pod = poll(lambda: running(forced), timeout=60, what="the task to start")["worker"].split("@", 1)[1]
        real_cluster.kubectl("delete", "pod", pod, "--grace-period=0", "--force", namespace=NAMESPACE)
        done = poll(lambda: (t := api.get(f"/v1/tasks/{forced}").json())["status"] == "SUCCESS" and t,
                    timeout=180, what="the task of the killed pod to be redelivered and finish")
        assert not done["worker"].endswith(pod), done


def test_a_worker_pods_grace_period_covers_a_task_killed_at_its_hard_time_limit(real_cluster, release):
    """The worst case of a graceful delete: the task ignores its soft limit and runs until the hard
    limit kills it. The chart's grace period (45 s here) is above the hard limit (30 s), so the
    worker records the failure and exits by itself before the kubelet would SIGKILL it."""
    grace = _json(real_cluster, "get", "deployment", "stalk-worker-default")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    with real_cluster.port_forward("svc/stalk-redis", 6379, NAMESPACE) as redis_port:
        client = _celery_client(redis_port, release.redis_password)
        # A soft limit beyond the task's length leaves the chart's hard limit (30 s) to end it.
        task_id = client.send_task("stalk.sleep", args=[120], queue="default", soft_time_limit=1000).id
        client.close()
    with real_cluster.port_forward("svc/stalk-api", 8000, NAMESPACE) as port, _api(port, release.token) as api:
        def record():
            answer = api.get(f"/v1/tasks/{task_id}")
            return answer.json() if answer.status_code == 200 else None

        started = poll(lambda: (t := record()) and t["status"] == "STARTED" and t["worker"] and t,
                       timeout=60, what="the task to start")
        pod = started["worker"].split("@", 1)[1]
        deleted_at = time.monotonic()
        real_cluster.kubectl("delete", "pod", pod, "--wait=false", namespace=NAMESPACE)
        done = poll(lambda: (t := record()) and t["status"] in ("SUCCESS", "FAILURE") and t,
                    timeout=90, what="the task on the deleted pod to reach its hard limit")

    def gone():
        return not any(p["metadata"]["name"] == pod for p in _pods(real_cluster, "stalk.dev/queue=default"))

    poll(gone, timeout=grace + 30, what=f"{pod} to be gone")
    took = time.monotonic() - deleted_at
    assert done["status"] == "FAILURE" and "TimeLimitExceeded" in str((done["error"] or {}).get("type")), done
    # Killed at the limit, not delivered again (acks late acknowledges a task that timed out).
    assert done["retries"] == 0 and done["worker"].endswith(pod), done
    # The worker exited by itself: a kubelet that had to SIGKILL it would have waited the whole grace.
    assert took < grace, f"{pod} took {took:.0f}s to go, its grace period is {grace}s"


def _records(api, ids):
    return {i: api.get(f"/v1/tasks/{i}").json() for i in ids}


def _first_runs(api, ids, seen):
    """Remember where and when each task was first seen running: (worker, started_at)."""
    for task_id, task in _records(api, ids).items():
        if task["status"] != "PENDING" and task["started_at"] and task_id not in seen:
            seen[task_id] = (task["worker"], task["started_at"])
    return seen


def test_scale_down_removes_only_idle_worker_pods_and_no_task_is_interrupted_or_run_twice(real_cluster, release):
    deployment = "stalk-worker-classification"
    poll(lambda: _replicas(real_cluster, deployment) == 0, timeout=120, what=f"{deployment} at zero replicas")
    with real_cluster.port_forward("svc/stalk-redis", 6379, NAMESPACE) as redis_port, \
            real_cluster.port_forward("svc/stalk-api", 8000, NAMESPACE) as api_port, _api(api_port, release.token) as api:
        client = _celery_client(redis_port, release.redis_password)
        # Two long tasks first, then a burst of short ones: the burst makes the operator add
        # workers, and once it is gone the long tasks still run while replicas come down.
        long_ids = [client.send_task("stalk.sleep", args=[22], queue="classification").id for _ in range(2)]
        short_ids = [client.send_task("stalk.sleep", args=[1], queue="classification").id for _ in range(10)]
        client.close()
        poll(lambda: _replicas(real_cluster, deployment) == 3, timeout=60, what="the burst to scale to 3 replicas")
        seen: dict[str, tuple[str, str]] = {}
        poll(lambda: len(_first_runs(api, long_ids, seen)) == 2, timeout=90, what="both long tasks to start")
        busy_pods = {seen[i][0].split("@", 1)[1] for i in long_ids}
        pods_at_peak = {p["metadata"]["name"] for p in _pods(real_cluster, "stalk.dev/queue=classification")}

        # The operator lowers replicas while the long tasks run; it may never go below the
        # busy pods, and the pods it removes are idle ones.
        poll(lambda: _replicas(real_cluster, deployment) < 3, timeout=60, what="a scale-down while the long tasks run")
        assert _replicas(real_cluster, deployment) >= len(busy_pods)
        for task in _records(api, long_ids).values():
            assert task["status"] == "STARTED", task  # the scale-down came while they ran

        def finished():
            records = _records(api, long_ids + short_ids)
            _first_runs(api, long_ids + short_ids, seen)
            return records if all(t["status"] == "SUCCESS" for t in records.values()) else None

        records = poll(finished, timeout=120, what="every task to finish")
        remaining = {p["metadata"]["name"] for p in _pods(real_cluster, "stalk.dev/queue=classification")}
    for task_id in long_ids:
        task = records[task_id]
        # Finished where it started, when it started: not interrupted, not delivered again.
        assert (task["worker"], task["started_at"]) == seen[task_id], (task, seen[task_id])
        assert task["retries"] == 0
    removed = pods_at_peak - remaining
    assert not removed & busy_pods, f"busy pods {busy_pods} were removed ({removed})"
    for task_id in short_ids:
        assert records[task_id]["retries"] == 0 and (records[task_id]["worker"], records[task_id]["started_at"]) == seen[task_id]


def test_an_upgrade_that_changes_the_image_rolls_workers_without_losing_a_task_or_the_operators_replicas(
        real_cluster, node_helm, release):
    deployment = "stalk-worker-classification"
    repository, tag = real_cluster.image("stalk")
    # The same image under a second tag, as a new release of it would be.
    real_cluster.node().ctr("images", "tag", "--force", f"{repository}:{tag}", f"{repository}:{tag}-next")
    with real_cluster.port_forward("svc/stalk-api", 8000, NAMESPACE) as port, _api(port, release.token) as api:
        submitted = api.post("/v1/tasks/batch", json={"tasks": [
            {"task": "stalk.sleep", "args": [12], "queue": "classification"} for _ in range(10)]})
        assert submitted.status_code == 202, submitted.text
        ids = [t["task_id"] for t in submitted.json()["tasks"]]
        poll(lambda: _replicas(real_cluster, deployment) >= 2, timeout=60, what="the operator to scale up")
        # The tasks at risk: running on the old pods when the rollout replaces them.
        running: dict[str, tuple[str, str]] = {}
        poll(lambda: len(_first_runs(api, ids, running)) >= 2, timeout=60, what="tasks to run on the old pods")

    # The image changes for every component: the API pod is replaced too, and with it the
    # port-forward, so the upgrade runs between two forwards.
    node_helm.run("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, *release.values,
                  "--set", f"image.tag={tag}-next", "--wait", "--timeout", "300s", timeout=330)
    replicas_after = _replicas(real_cluster, deployment)

    with real_cluster.port_forward("svc/stalk-api", 8000, NAMESPACE) as port, _api(port, release.token) as api:
        unfinished_after_upgrade = [i for i, t in _records(api, ids).items() if t["status"] != "SUCCESS"]
        def finished():
            records = _records(api, ids)
            return records if all(t["status"] == "SUCCESS" for t in records.values()) else None

        records = poll(finished, timeout=180, what="every task to finish across the upgrade")
    for task_id, task in records.items():
        assert task["retries"] == 0, task
    for task_id, first in running.items():
        # Warm shutdown: a task running on an old pod finished there, once.
        assert (records[task_id]["worker"], records[task_id]["started_at"]) == first, (records[task_id], first)
    # The chart leaves the replicas of autoscaled workers to the operator: while work remained,
    # the upgrade did not put the Deployment back to the chart's minReplicas (0).
    assert not unfinished_after_upgrade or replicas_after >= 1, (replicas_after, unfinished_after_upgrade)
    def worker_images(live_only: bool) -> set[str]:
        return {c["image"] for p in _pods(real_cluster, "app.kubernetes.io/component=worker")
                if not (live_only and p["metadata"].get("deletionTimestamp")) for c in p["spec"]["containers"]}

    # Every worker that still takes work runs the new image; an old pod whose last task just
    # finished may still be shutting down, and must be gone within its grace period.
    assert worker_images(live_only=True) <= {f"{repository}:{tag}-next"}, worker_images(live_only=True)
    poll(lambda: worker_images(live_only=False) <= {f"{repository}:{tag}-next"}, timeout=120,
         what="the old worker pods to finish shutting down")


def test_uninstall_leaves_only_the_crd(real_cluster, node_helm, release):
    node_helm.env["KUBECONFIG"] = str(real_cluster.kubeconfig)
    uninstall_leaves_only_the_crd(node_helm, real_cluster, NAMESPACE)
    # No container of the release is left on the node.
    poll(lambda: not _pods(real_cluster), timeout=120, what="every pod of the release to be gone")
