"""`skaffold dev -p node`: the inner loop on the real node: build with buildah, push to the node, deploy.

skaffold (built from Go modules) runs its custom builder, hack/skaffold-build.sh: buildah builds the
DEV_RELOAD image and pushes it to the node's own registry, which the node pulls from; skaffold
installs the chart with helm and the pods run the pushed image; an edited Python file is then
copied into the running API pod (skaffold's file sync) and the API answers with the change. The
test runs on a copy of the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
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
# skaffold notices the edit (it polls every second), copies it, and the API restarts (~3 s).
SYNC_SECONDS = 30


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


def test_skaffold_dev_builds_pushes_deploys_and_syncs_an_edited_file_into_the_running_pod(
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
        # The API pod runs the image skaffold built and pushed to the node's registry, and answers.
        pod = real_cluster.ready_pod("stalk-api", NAMESPACE)
        spec = json.loads(real_cluster.kubectl("get", "pod", pod, "-o", "json", namespace=NAMESPACE).stdout)["spec"]
        assert spec["containers"][0]["image"].startswith(f"{real_node.REGISTRY}/stalk:"), spec["containers"][0]["image"]
        def health():
            # A forward per request: kubectl's port-forward ends for good at the first refused
            # connection, which the API restarting after a sync always causes.
            try:
                with real_cluster.port_forward(f"pod/{pod}", 8000, NAMESPACE) as port:
                    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
            except (AssertionError, httpx.HTTPError, ValueError):
                return None

        assert health() == {"status": "ok"}
        # The inner loop: an edited Python file is copied into the running pod (no rebuild) and
        # the API's reload wrapper restarts it with the change.
        module = skaffold_repo / "api" / "stalk_api" / "routes" / "health.py"
        source = module.read_text()
        assert 'return {"status": "ok"}' in source
        edited = time.monotonic()
        module.write_text(source.replace('return {"status": "ok"}', 'return {"status": "ok", "synced": True}'))
        try:
            poll(lambda: health() == {"status": "ok", "synced": True}, timeout=SYNC_SECONDS,
                 what="the edited health.py to answer from the pod")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(skaffold_repo.parent / 'skaffold.log').read_text()[-3000:]}") from None
        print(f"skaffold dev: an edited file answered from the pod {time.monotonic() - edited:.1f}s later")
        log_text = (skaffold_repo.parent / "skaffold.log").read_text()
        assert "Syncing 1 files for" in log_text, log_text[-3000:]
        # Synced, not rebuilt: the pod is the same one and runs the same image.
        assert real_cluster.ready_pod("stalk-api", NAMESPACE) == pod
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
