"""The chart's rendered commands, environment and probes run for real, outside Kubernetes.

kwok never runs a container, so this is where the chart meets the code: the API container's
command with its rendered environment (after the migration init container), a worker from the
rendered worker Deployment, the worker's liveness probe command, beat with the rendered
schedule, the `helm test` pod's own shell line, which must submit stalk.health_check through the API and see SUCCESS,
and the recoverer, which must publish again a task whose message Redis lost.
Only what a cluster would provide is substituted: Secret values (a real local Redis, a SQLite
file), mounted file paths, ports, and the pod's HOSTNAME.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import httpx
import redis

import pytest

from tests.chart.conftest import by_kind
from tests.fixtures.kube import poll
from tests.fixtures.servers import free_port, unavailable

BIN = Path(sys.executable).parent  # the venv's `stalk` and `celery`


def container_env(container: dict, config: dict, secrets: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """The environment Kubernetes would give this container, with Secret values from `secrets`."""
    env = {k: v for k, v in config.items() if k != "queues.yaml"}  # envFrom the shared ConfigMap
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = secrets[item["name"]]
    return {**env, **overrides}


def run_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STALK_")}
    return {**base, **env, "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}"}


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_the_rendered_api_worker_probe_and_helm_test_commands_work_together(helm, redis_urls, tmp_path, processes):
    if shutil.which("sh") is None:
        unavailable("the chart's probe and test commands run through sh")
    objects = helm.template(sets={"beat.enabled": "true", "beat.schedule.heartbeat.task": "stalk.health_check",
                                  "beat.schedule.heartbeat.seconds": "1",
                                  # The least grace, and a pass a second, so a recovery is seen within the test.
                                  "recover.afterSeconds": "10", "recover.everySeconds": "1"})
    config = by_kind(objects, "ConfigMap")["stalk-config"]["data"]
    queues_file = tmp_path / "queues.yaml"
    queues_file.write_text(config["queues.yaml"])
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("first-token\nsecond-token\n")
    secrets = {"STALK_BROKER_URL": redis_urls[0], "STALK_RESULT_BACKEND": redis_urls[1],
               "STALK_DATABASE_URL": f"sqlite:///{tmp_path / 'stalk.db'}"}
    mounts = {"STALK_QUEUES_FILE": str(queues_file)}
    api_port = free_port()

    # The API pod: its init container migrates, then the API serves with the mounted tokens.
    api_pod = by_kind(objects, "Deployment")["stalk-api"]["spec"]["template"]["spec"]
    (migrate,) = api_pod["initContainers"]
    env = container_env(migrate, config, secrets, mounts)
    proc = subprocess.run([*migrate["command"], *migrate["args"]], env=run_env(env), capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    api = api_pod["containers"][0]
    env = container_env(api, config, secrets, {**mounts, "STALK_API_TOKENS_FILE": str(tokens_file),
                                               "STALK_API_PORT": str(api_port)})
    assert env["STALK_API_HOST"] == "0.0.0.0" and env["STALK_MIGRATE_ON_START"] == "false"
    with (tmp_path / "api.log").open("w") as log:
        processes.append(subprocess.Popen([*api["command"], *api["args"]], env=run_env(env), cwd=tmp_path,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def api_ready():
        assert processes[0].poll() is None, (tmp_path / "api.log").read_text()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=2) as resp:
            return resp.status == 200
    poll(api_ready, timeout=60, what="the API's /readyz")

    # The default queue's worker pod; in a pod HOSTNAME is the pod name, which the node name uses.
    worker_pod = by_kind(objects, "Deployment")["stalk-worker-default"]["spec"]["template"]["spec"]
    worker = worker_pod["containers"][0]
    env = container_env(worker, config, secrets, {**mounts, "STALK_WORKER_METRICS_PORT": str(free_port()),
                                                  "HOSTNAME": socket.gethostname()})
    with (tmp_path / "worker.log").open("w") as log:
        processes.append(subprocess.Popen([*worker["command"], *worker["args"]], env=run_env(env), cwd=tmp_path,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    # The worker's liveness probe passes once the worker is up (and would fail while it is not).
    probe = worker["livenessProbe"]["exec"]["command"]

    def alive():
        assert processes[1].poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        return subprocess.run(probe, env=run_env(env), capture_output=True, timeout=30, cwd=tmp_path).returncode == 0
    poll(alive, timeout=90, interval=1, what="the worker's liveness probe to pass")

    # Beat, with the schedule the chart puts in STALK_BEAT_SCHEDULE: it sends the health check every second.
    beat = by_kind(objects, "Deployment")["stalk-beat"]["spec"]["template"]["spec"]["containers"][0]
    args = [a.replace("/tmp/", f"{tmp_path}/") for a in beat["args"]]  # /tmp is an emptyDir in the pod
    env = container_env(beat, config, secrets, mounts)
    with (tmp_path / "beat.log").open("w") as log:
        processes.append(subprocess.Popen([*beat["command"], *args], env=run_env(env), cwd=tmp_path,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def beat_sent():
        assert processes[2].poll() is None, (tmp_path / "beat.log").read_text()[-3000:]
        return "Sending due task heartbeat (stalk.health_check)" in (tmp_path / "beat.log").read_text()
    poll(beat_sent, timeout=60, interval=0.5, what="beat to send the scheduled health check")

    # `helm test`: the hook pod's own command line, with the token file at its mounted path.
    pod = by_kind(objects, "Pod")["stalk-test-health-check"]["spec"]
    test = pod["containers"][0]
    line = test["args"][0].replace("/etc/stalk/api-tokens/tokens", str(tokens_file))
    env = {e["name"]: e["value"] for e in test["env"]}
    env["STALK_API_URL"] = f"http://127.0.0.1:{api_port}"
    env["HOME"] = str(tmp_path)
    proc = subprocess.run([*test["command"], line], env=run_env(env), capture_output=True, text=True, timeout=180,
                          cwd=tmp_path)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
    assert "SUCCESS" in proc.stdout

    # The recoverer with the rendered settings: a task of a queue no worker here consumes loses its
    # message (FLUSHDB); the recoverer publishes it again and counts it on the port its probe uses.
    client = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": "Bearer first-token"})
    task_id = client.post("/v1/tasks", json={"task": "stalk.echo", "queue": "classification"}).json()["task_id"]
    poll(lambda: redis.Redis.from_url(redis_urls[0]).llen("classification") == 1, timeout=10,
         what="the task's message in Redis")
    redis.Redis.from_url(redis_urls[0]).flushdb()
    recover = by_kind(objects, "Deployment")["stalk-recover"]["spec"]["template"]["spec"]["containers"][0]
    metrics_port = free_port()
    env = container_env(recover, config, secrets, {**mounts, "STALK_RECOVER_METRICS_PORT": str(metrics_port)})
    assert env["STALK_RECOVER_AFTER_SECONDS"] == "10"
    with (tmp_path / "recover.log").open("w") as log:
        processes.append(subprocess.Popen([*recover["command"], *recover["args"]], env=run_env(env), cwd=tmp_path,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    probe = recover["livenessProbe"]["httpGet"]
    assert probe["port"] == recover["ports"][0]["name"] == "metrics"

    def recovered():
        assert processes[3].poll() is None, (tmp_path / "recover.log").read_text()[-3000:]
        text = httpx.get(f"http://127.0.0.1:{metrics_port}{probe['path']}", timeout=2).text
        return 'stalk_recover_tasks_recovered_total{queue="classification"} 1.0' in text
    poll(recovered, timeout=60, interval=0.5, what="the recoverer to publish the lost task again")
    assert client.get(f"/v1/tasks/{task_id}").json()["recovered"] == 1
    assert redis.Redis.from_url(redis_urls[0]).llen("classification") == 1
    assert "warning" not in (tmp_path / "recover.log").read_text()
