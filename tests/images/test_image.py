"""Each image command starts from the installed package with the image's environment.

No container engine runs here, so the build stage of the Dockerfile is carried out locally
(tests/images/dockerfile.py: the same uv commands, the same lock file, wheels only, hashes
checked) into a throwaway virtualenv, and each command the Helm chart runs is started from it
with the runtime stage's ENV, in its WORKDIR, with nothing from the repository on the path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.servers import free_port, fresh_redis_pair, unavailable, wait_until
from tests.images.dockerfile import LocalImage, build_locally

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "k8s" / "crd" / "taskqueues.stalk.dev.yaml"
TOKEN = "image-test-token"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> LocalImage:
    root = tmp_path_factory.mktemp("image")
    with (root / "build.log").open("w") as log:
        built = build_locally(root, log)
    return built


@pytest.fixture
def run(image, tmp_path) -> Iterator:
    """Start an image command in the background (its own session); stopped after the test."""
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(*argv: str, **env: str) -> tuple[subprocess.Popen, Path]:
        log_path = tmp_path / f"{argv[0].replace('/', '_')}-{argv[1] if len(argv) > 1 else ''}-{len(started)}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(image.command(*argv), env=image.environment(**env),
                                    cwd=image.path(image.dockerfile.runtime.workdir()),
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started.append((proc, log_path))
        return proc, log_path

    yield start
    for proc, _ in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc, _ in started:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture
def services(redis_server, tmp_path) -> dict[str, str]:
    """What the chart gives every stalk container: Redis, a database (here SQLite), migrated."""
    broker, backend = fresh_redis_pair(redis_server)
    return {"STALK_BROKER_URL": broker, "STALK_RESULT_BACKEND": backend,
            "STALK_DATABASE_URL": f"sqlite:///{tmp_path / 'records.db'}"}


def migrate(image: LocalImage, services: dict[str, str]) -> None:
    """`stalk db upgrade`, as the chart's migration Job and init container run it."""
    result = subprocess.run(image.command("stalk", "db", "upgrade"), env=image.environment(**services),
                            cwd=image.path("/opt/stalk"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "database at head" in result.stdout


def log_of(path: Path) -> str:
    return path.read_text(errors="replace")


def test_the_package_comes_from_the_image_venv_not_the_repository(image):
    code = "import stalk_api, stalk_operator, stalk_workers; print(stalk_api.__file__, stalk_operator.__file__, stalk_workers.__file__)"
    result = subprocess.run(image.command("python", "-c", code), env=image.environment(),
                            cwd=image.path("/opt/stalk"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for path in result.stdout.split():
        assert path.startswith(str(image.venv / "lib")), path
    # Bytecode was compiled at build time: a read-only root file system costs no start-up time.
    assert list((image.venv / "lib").glob("python3.*/site-packages/stalk_workers/__pycache__/*.pyc"))


def test_api_refuses_to_listen_on_all_interfaces_without_tokens_then_serves_with_them(image, run, services):
    migrate(image, services)
    port = str(free_port())
    proc, log = run("stalk", "api", STALK_API_PORT=port, **services)
    assert proc.wait(60) != 0
    assert "STALK_API_TOKENS" in log_of(log)

    proc, log = run("stalk", "api", STALK_API_PORT=port, STALK_API_TOKENS=TOKEN, STALK_MIGRATE_ON_START="false",
                    **services)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: proc.poll() is None and httpx.get(f"{base}/healthz", timeout=2).status_code == 200,
               timeout=60, what=f"the API's /healthz (log: {log})")
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    queues = httpx.get(f"{base}/v1/queues", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert queues.status_code == 200, queues.text
    assert "stalk_api_requests_total" in httpx.get(f"{base}/metrics", timeout=5).text


def test_worker_answers_a_ping_runs_a_task_and_serves_metrics(image, run, services):
    from celery import Celery

    migrate(image, services)
    metrics_port = str(free_port())
    proc, log = run("stalk", "worker", "--queues", "default", "--concurrency", "1",
                    STALK_WORKER_METRICS_PORT=metrics_port, **services)
    client = Celery(broker=services["STALK_BROKER_URL"], backend=services["STALK_RESULT_BACKEND"])
    try:
        replies = wait_until(lambda: proc.poll() is None and client.control.ping(timeout=0.5), timeout=60,
                             what=f"the worker to answer a ping (log: {log})")
        assert any(name.startswith("default@") for reply in replies for name in reply)
        result = client.send_task("stalk.health_check", queue="default")
        assert result.get(timeout=30)["status"] == "ok"
    finally:
        client.close()
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'stalk_worker_tasks_succeeded_total{queue="default",task="stalk.health_check"} 1.0' in text


def test_beat_starts_and_sends_its_schedule(image, run, services):
    schedule = json.dumps({"heartbeat": {"task": "stalk.health_check", "seconds": 1}})
    # The chart's arguments: the schedule file in /tmp (the only writable place).
    proc, log = run("stalk", "beat", "--schedule-file", "/tmp/stalk-beat-schedule", "--loglevel", "info",
                    STALK_BEAT_SCHEDULE=schedule, **services)
    wait_until(lambda: "beat: Starting..." in log_of(log) and "Sending due task heartbeat" in log_of(log),
               timeout=60, what=f"beat to start and send its task (log: {log})")
    assert proc.poll() is None
    # shelve may add a suffix, depending on the dbm module the interpreter has.
    assert list(Path(image.path("/tmp")).glob("stalk-beat-schedule*"))


@pytest.mark.cluster
def test_operator_starts_against_the_cluster_and_reports_healthy(image, run, kube_cluster, kube_namespace):
    kube_cluster.kubectl("apply", "-f", str(CRD))
    kube_cluster.kubectl("wait", "--for=condition=Established", "crd/taskqueues.stalk.dev", "--timeout=60s")
    port = str(free_port())
    proc, log = run("python", "-m", "stalk_operator", KUBECONFIG=str(kube_cluster.kubeconfig),
                    STALK_OPERATOR_NAMESPACE=kube_namespace, STALK_WATCH_NAMESPACES=kube_namespace,
                    STALK_METRICS_HOST="127.0.0.1", STALK_METRICS_PORT=port)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: proc.poll() is None and httpx.get(f"{base}/readyz", timeout=2).status_code == 200,
               timeout=60, what=f"the operator's /readyz (log: {log})")
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    assert "stalk_operator_is_leader" in httpx.get(f"{base}/metrics", timeout=5).text


def test_dev_image_restarts_a_command_when_skaffold_syncs_a_python_file(image, run, services):
    """The runtime stage's DEV_RELOAD step (skaffold.yaml sets it) wraps `stalk` in watchfiles."""
    if os.geteuid() != 0:
        unavailable("the DEV_RELOAD step chowns the packages to the image user, which needs root")
    (step,) = [r for r in image.dockerfile.runtime.all("RUN") if "DEV_RELOAD" in r]
    bin_dir = image.venv / "bin"
    try:
        result = subprocess.run(["bash", "-eu", "-c", image.path(step)], env={**os.environ, "DEV_RELOAD": "true"},
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        synced = next((image.venv / "lib").glob("python3.*/site-packages/stalk_api/routes/health.py"))
        assert synced.stat().st_uid == 10001, "the image user may overwrite synced files"

        port = str(free_port())
        proc, log = run("stalk", "api", STALK_API_PORT=port, STALK_API_TOKENS=TOKEN, **services)
        healthz = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: proc.poll() is None and httpx.get(healthz, timeout=2).status_code == 200, timeout=60,
                   what=f"the API under the reload wrapper (log: {log})")
        starts = log_of(log).count("Application startup complete")
        synced.write_text(synced.read_text() + "\n# synced by skaffold\n")
        wait_until(lambda: log_of(log).count("Application startup complete") > starts
                   and httpx.get(healthz, timeout=2).status_code == 200, timeout=60,
                   what=f"the API to restart after the file changed (log: {log})")
        # One-off commands run and exit under the wrapper: the migrations init container
        # (`stalk db upgrade`) and `helm test` (`stalk submit`) must finish for a rollout to go on.
        one_off = subprocess.run([str(bin_dir / "stalk"), "--help"], capture_output=True, text=True, timeout=60,
                                 env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
        assert one_off.returncode == 0 and "Usage" in one_off.stdout, one_off.stderr
    finally:
        # Leave the module's image as the release build made it.
        if (bin_dir / "stalk-app").exists():
            (bin_dir / "stalk-app").replace(bin_dir / "stalk")
