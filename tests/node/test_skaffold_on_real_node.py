"""`skaffold dev -p node`: the inner loop on the real node, with a Python file synced into the running API.

skaffold (built from Go modules) runs its custom builder, hack/skaffold-build.sh: buildah builds the
DEV_RELOAD image and pushes it to the node's own registry, which the node pulls from; skaffold
installs the chart with helm and then copies a changed Python file into the API pod, where the
reload wrapper restarts `stalk api`. The test runs on a copy of the repository, so the change never touches the checkout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fixtures.kube import poll
from tests.fixtures.servers import unavailable
from tests.node.conftest import real_node

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".cluster" / "bin"
NAMESPACE = "stalk-dev"  # skaffold.yaml's release namespace
# A change a developer makes: a new route in an existing module of the API.
SYNC_CHECK = '''

@router.get("/sync-check-{token}", include_in_schema=False)
def _sync_check() -> dict:
    return {{"synced": "{token}"}}
'''


def _copy_of_the_repository(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split("\0")):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@pytest.fixture
def skaffold_repo(tmp_path, real_cluster) -> Path:
    if not os.access(BIN / "skaffold", os.X_OK):
        unavailable(f"skaffold missing in {BIN} (make tools-bins)")
    repo = tmp_path / "stalk"
    _copy_of_the_repository(repo)
    values = {"redis": {"image": {}}, "postgresql": {"image": {}}}
    for key, image in (("redis", "redis"), ("postgresql", "postgres")):
        repository, tag = real_cluster.image(image)
        values[key]["image"] = {"repository": repository, "tag": tag, "pullPolicy": "Never"}
    (repo / ".cluster").mkdir()
    (repo / ".cluster" / "images-values.yaml").write_text(yaml.safe_dump(values))
    return repo


def test_skaffold_dev_builds_with_buildah_deploys_and_syncs_a_python_file_into_the_api_pod(
        real_cluster, skaffold_repo, node_helm):
    env = dict(os.environ, KUBECONFIG=str(real_cluster.kubeconfig),
               PATH=f"{BIN}:{os.environ['PATH']}", SKAFFOLD_UPDATE_CHECK="false",
               # skaffold's and helm's own settings start empty; the image cache is the usual one.
               HOME=str(skaffold_repo.parent),
               STALK_CACHE_DIR=os.environ.get("STALK_CACHE_DIR") or str(Path.home() / ".cache" / "stalk"))
    log = (skaffold_repo.parent / "skaffold.log").open("w")
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "skaffold"), "dev", "-p", "node", f"--default-repo={real_node.REGISTRY}", "--port-forward=off",
         "--cache-artifacts=false",
         "--interactive=false", "--status-check=true"],
        cwd=skaffold_repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 420
        while "Watching for changes" not in (text := (skaffold_repo.parent / "skaffold.log").read_text()):
            assert proc.poll() is None, f"skaffold exited ({proc.returncode}):\n{text[-3000:]}"
            assert time.monotonic() < deadline, f"skaffold dev did not deploy in 420 s:\n{text[-3000:]}"
            time.sleep(1)
        print(f"skaffold dev: built and deployed in {time.monotonic() - started:.0f}s")
        token = uuid.uuid4().hex[:12]
        with real_cluster.port_forward("svc/stalk-api", 8000, NAMESPACE) as port:
            url = f"http://127.0.0.1:{port}/sync-check-{token}"
            assert httpx.get(url, timeout=10).status_code == 404
            with (skaffold_repo / "api" / "stalk_api" / "routes" / "health.py").open("a") as f:
                f.write(SYNC_CHECK.format(token=token))
            changed = time.monotonic()

            def answers():
                try:
                    response = httpx.get(url, timeout=5)
                except httpx.HTTPError:
                    return None  # the API restarting after the sync
                return response.status_code == 200 and response.json() == {"synced": token}

            poll(answers, timeout=120, interval=0.5, what="the synced file to change the running API's answer")
            print(f"skaffold dev: a changed Python file answered in the API pod {time.monotonic() - changed:.1f}s later")
        # Synced, not rebuilt: the pod that answers is the one skaffold deployed.
        assert "Syncing 1 files" in (skaffold_repo.parent / "skaffold.log").read_text()
    finally:
        # Ctrl-C: skaffold dev removes what it deployed.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    poll(lambda: not real_cluster.kubectl("get", "pods", "-o", "name", namespace=NAMESPACE).stdout.strip(),
         timeout=120, what="skaffold's cleanup to remove the release's pods")
