"""The chart's Flower, run as the rendered container would run: ``celery --config stalk_flower_config
flower`` (Flower 2.0.1, the image's version) with the config module taken out of the rendered
ConfigMap, against a real Redis over TLS that wants a client certificate and a real Sentinel-managed
primary behind Sentinels with a password of their own (and a key prefix). A real stalk worker, the
rendered worker Deployment's command, runs beside it.

Flower must list that worker (a remote-control broadcast and its replies through the broker) and
report the same queue length as the broker (its own redis-py client, which reads only the settings
the module makes): neither is possible unless it really reached the broker with the right TLS
files, master name, Sentinel password and key prefix. Only what a cluster would provide is
substituted: Secret values, mounted file paths, ports and HOSTNAME.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from tests.chart.conftest import by_kind
from tests.chart.test_processes import container_env, processes, run_env  # noqa: F401 - a fixture, by name
from tests.fixtures.kube import poll
from tests.fixtures.sentinel import start_sentinel_cluster
from tests.fixtures.servers import free_port

FLOWER_USER, FLOWER_PASSWORD = "admin", "flower-secret"
SENTINEL_PASSWORD = "s3ntinel"
# Each sleeps longer than the test waits: the one worker process holds one, the rest stay queued.
SLEEPS, SLEEP_SECONDS = 5, 120
EXTERNAL = {"redis.enabled": "false", "externalRedis.existingSecret": "my-redis", "flower.enabled": "true",
            "flower.basicAuthSecret": "flower-auth", "config.recordTasks": "false",
            "queues.default.concurrency": "1"}


def kill_worker(processes: list) -> None:
    """The worker at once: a warm shutdown would wait for its sleeping tasks (the fixture then stops Flower)."""
    if processes and processes[0].poll() is None:
        os.killpg(processes[0].pid, signal.SIGKILL)


def flower_env(container: dict, config: dict, secrets: dict[str, str], mounts: dict[str, Path]) -> dict[str, str]:
    """Flower's environment as Kubernetes would set it: Secret values from `secrets`, the shared
    ConfigMap's keys, and mounted paths moved to where the test put the files."""
    env = {}
    for item in container["env"]:
        source = item.get("valueFrom", {})
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in source:
            env[item["name"]] = secrets[item["name"]]
        else:
            env[item["name"]] = config[source["configMapKeyRef"]["key"]]
    for name, value in env.items():
        for mount_path, local in mounts.items():
            if value == mount_path or value.startswith(f"{mount_path}/"):
                env[name] = f"{local}{value[len(mount_path):]}"
    return env


def mount_tls_files(pod: dict, tmp_path: Path, files: dict[str, Path]) -> Path:
    """The projected redis-tls volume's files, under the names the rendered volume gives them."""
    (volume,) = [v for v in pod["volumes"] if v["name"] == "redis-tls"]
    directory = tmp_path / "redis-tls"
    directory.mkdir()
    for source in volume["projected"]["sources"]:
        for item in source["secret"]["items"]:
            shutil.copy(files[item["path"]], directory / item["path"])
    return directory


def run_flower_and_worker(objects: list[dict], secrets: dict[str, str], tmp_path: Path, processes: list,
                          mounts: dict[str, Path]) -> tuple[int, str, dict[str, str]]:
    """Start the rendered worker (queue default) and Flower; return Flower's port, the worker's name
    and its environment."""
    config = by_kind(objects, "ConfigMap")["stalk-config"]["data"]
    queues_file = tmp_path / "queues.yaml"
    queues_file.write_text(config["queues.yaml"])
    hostname = socket.gethostname()

    worker = by_kind(objects, "Deployment")["stalk-worker-default"]["spec"]["template"]["spec"]["containers"][0]
    worker_env = container_env(worker, config, secrets, {"STALK_QUEUES_FILE": str(queues_file), "HOSTNAME": hostname,
                                                         "STALK_WORKER_METRICS_PORT": str(free_port())})
    for mount_path, local in mounts.items():
        worker_env = {name: value.replace(mount_path, str(local)) for name, value in worker_env.items()}
    with (tmp_path / "worker.log").open("w") as log:
        processes.append(subprocess.Popen([*worker["command"], *worker["args"]], env=run_env(worker_env),
                                          cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    # The module as the flower ConfigMap carries it, in the directory PYTHONPATH names.
    module_dir = tmp_path / "flower-config"
    module_dir.mkdir()
    for name, text in by_kind(objects, "ConfigMap")["stalk-flower"]["data"].items():
        (module_dir / name).write_text(text)
    flower = by_kind(objects, "Deployment")["stalk-flower"]["spec"]["template"]["spec"]["containers"][0]
    env = flower_env(flower, config, secrets, {**mounts, "/etc/stalk/flower": module_dir, "/tmp": tmp_path})
    assert env["PYTHONPATH"] == str(module_dir)
    port = free_port()
    args = [f"--port={port}" if a.startswith("--port=") else a for a in flower["args"]]
    # Run from elsewhere than the module's directory: only PYTHONPATH may find it, as in the pod.
    with (tmp_path / "flower.log").open("w") as log:
        processes.append(subprocess.Popen([*flower["command"], *args], env=run_env(env), cwd="/",
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return port, f"default@{hostname}", worker_env


def flower_get(port: int, path: str, processes: list, tmp_path: Path):
    for proc, log in zip(processes, ("worker.log", "flower.log"), strict=True):
        assert proc.poll() is None, f"{log}:\n{(tmp_path / log).read_text()[-3000:]}"
    auth = base64.b64encode(f"{FLOWER_USER}:{FLOWER_PASSWORD}".encode()).decode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def see_worker_and_queue(port: int, node: str, worker_env_source: dict, queue_length, processes: list,
                         tmp_path: Path) -> None:
    """Flower lists the worker, then reports the broker's own queue length once sleeps are queued."""
    seen = {}

    def listed():
        try:
            seen["workers"] = flower_get(port, "/api/workers?refresh=1", processes, tmp_path)
        except (urllib.error.URLError, ConnectionError):
            return False  # Flower still starting
        # Its queues too: Flower reads the lengths of the queues its workers consume.
        return seen["workers"].get(node, {}).get("active_queues")
    try:
        poll(listed, timeout=90, interval=1, what=f"Flower to list the worker {node} and its queues")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {str(seen)[:3000]}") from None

    # Queued through the broker with stalk's own CLI (the worker's environment, so its settings).
    call = ["celery", "-A", "stalk_workers.app", "call", "stalk.sleep", "--queue", "default",
            "--kwargs", json.dumps({"seconds": SLEEP_SECONDS})]
    for _ in range(SLEEPS):
        proc = subprocess.run(call, env=run_env(worker_env_source), capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr

    def same_length():
        seen["flower"] = flower_get(port, "/api/queues/length", processes, tmp_path)
        seen["broker"] = queue_length()
        lengths = {q["name"]: q["messages"] for q in seen["flower"]["active_queues"]}
        return seen["broker"] > 0 and lengths.get("default") == seen["broker"]
    try:
        poll(same_length, timeout=60, interval=1, what="Flower's length of queue default to be the broker's")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {seen}") from None


def test_flower_reaches_redis_over_tls_with_a_client_certificate(helm, mtls_redis, tmp_path, processes):
    objects = helm.template(sets={**EXTERNAL, "externalRedis.tls.enabled": "true",
                                  "externalRedis.tls.caSecret.name": "redis-ca",
                                  "externalRedis.tls.clientCertSecret": "redis-client"})
    pod = by_kind(objects, "Deployment")["stalk-flower"]["spec"]["template"]["spec"]
    certs = mtls_redis.certs
    tls_dir = mount_tls_files(pod, tmp_path, {"ca.crt": certs.ca, "tls.crt": certs.client_cert,
                                              "tls.key": certs.client_key})
    db = 40
    for n in (db, db + 1):
        mtls_redis.client(n).flushdb()
    # The URLs as a user puts them in the Secret: TLS comes from the chart's files, not the query.
    secrets = {"STALK_BROKER_URL": f"rediss://127.0.0.1:{mtls_redis.port}/{db}",
               "STALK_RESULT_BACKEND": f"rediss://127.0.0.1:{mtls_redis.port}/{db + 1}",
               "STALK_DATABASE_URL": f"sqlite:///{tmp_path / 'stalk.db'}",
               "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}"}
    secrets["CELERY_BROKER_URL"] = secrets["STALK_BROKER_URL"]
    mounts = {"/etc/stalk/redis-tls": tls_dir}
    try:
        port, node, worker_env = run_flower_and_worker(objects, secrets, tmp_path, processes, mounts)
        see_worker_and_queue(port, node, worker_env, lambda: mtls_redis.client(db).llen("default"), processes,
                             tmp_path)
    finally:
        kill_worker(processes)


def test_flower_reaches_a_sentinel_managed_primary_with_a_key_prefix(helm, tmp_path, processes):
    cluster = start_sentinel_cluster(tmp_path / "sentinel", sentinel_password=SENTINEL_PASSWORD)
    try:
        objects = helm.template(sets={**EXTERNAL, "externalRedis.sentinel.masterName": cluster.master_name,
                                      "externalRedis.sentinel.passwordSecret": "my-sentinel",
                                      "config.brokerKeyPrefix": "stalk:"})
        secrets = {"STALK_BROKER_URL": cluster.url(0), "STALK_RESULT_BACKEND": cluster.url(1),
                   "STALK_DATABASE_URL": f"sqlite:///{tmp_path / 'stalk.db'}",
                   "STALK_BROKER_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
                   "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}"}
        secrets["CELERY_BROKER_URL"] = secrets["STALK_BROKER_URL"]
        port, node, worker_env = run_flower_and_worker(objects, secrets, tmp_path, processes, {})

        def primary_length() -> int:
            return cluster.client(cluster.current_primary_port(), 0).llen("stalk:default")
        see_worker_and_queue(port, node, worker_env, primary_length, processes, tmp_path)
    finally:
        kill_worker(processes)
        for proc in processes[1:]:
            proc.terminate()  # Flower, before its Sentinels go
        cluster.stop()
