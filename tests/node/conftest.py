"""A real node for the test session: stalk's own image running in real pods.

``real_cluster`` starts the test control plane with one real node (``hack/cluster.py up
--node real``: containerd + runc, kubelet, kube-proxy, CoreDNS; see hack/node.py), builds
the images with ``make image``'s script (cached by content) and loads them into the node.
It is session-scoped and stops the node at the end; ``stop()`` lets the cleanup test stop
it earlier and look at what the machine kept.

One real node runs on a machine at a time (it owns the network link ``stalk-node0``), so
these tests never run beside another session's real node.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.kube import CLUSTERS_DIR, KubeCluster, ensure_cluster_binaries, poll
from tests.fixtures.servers import unavailable

REPO = Path(__file__).resolve().parents[2]
CLUSTER_PY = REPO / "hack" / "cluster.py"
sys.path.insert(0, str(REPO / "hack"))
import node as real_node  # noqa: E402 - hack/node.py: addresses, packages, snapshot

pytestmark = pytest.mark.cluster


def pytest_collection_modifyitems(session, config, items):
    # The cleanup test stops the session's node and compares the machine with how it was:
    # it must come after every other test that uses the node.
    last = [i for i in items if i.get_closest_marker("stops_the_node")]
    for item in last:
        items.remove(item)
    items.extend(last)


def pytest_configure(config):
    config.addinivalue_line("markers", "stops_the_node: stops the session's real node (runs last)")


@dataclass
class RealCluster(KubeCluster):
    images: dict[str, dict] = field(default_factory=dict)
    stopped: bool = False

    def image(self, name: str) -> tuple[str, str]:
        """(repository, tag) of a built image: stalk, redis or postgres."""
        ref = self.images[name]["ref"]
        repository, _, tag = ref.rpartition(":")
        return repository, tag

    def node(self) -> real_node.Node:
        """The node's files and containerd (``ctr``), for what kubectl cannot do."""
        return real_node.Node(str(self.state_dir), str(REPO / ".cluster" / "bin"))

    def stop(self) -> subprocess.CompletedProcess:
        self.stopped = True
        return subprocess.run([sys.executable, str(CLUSTER_PY), "down", "--state-dir", str(self.state_dir)],
                              capture_output=True, text=True)

    def ready_pod(self, service: str, namespace: str) -> str:
        """A Ready, not terminating pod behind a Service (what a forward to it should reach)."""
        svc = json.loads(self.kubectl("get", "service", service, "-o", "json", namespace=namespace).stdout)
        selector = ",".join(f"{k}={v}" for k, v in svc["spec"]["selector"].items())

        def pick():
            pods = json.loads(self.kubectl("get", "pods", "-l", selector, "-o", "json", namespace=namespace).stdout)
            return next((p["metadata"]["name"] for p in pods["items"] if not p["metadata"].get("deletionTimestamp")
                         and any(c["type"] == "Ready" and c["status"] == "True"
                                 for c in p["status"].get("conditions") or [])), None)

        return poll(pick, timeout=120, what=f"a Ready pod behind Service {service}")

    @contextmanager
    def port_forward(self, target: str, port: int, namespace: str) -> Iterator[int]:
        """`kubectl port-forward` to a pod (or a Service's Ready pod); yields the local port on 127.0.0.1.

        A forward is bound to one pod for its life, so ``svc/NAME`` is resolved here to a Ready
        pod that is not terminating (kubectl would take any running one, e.g. one a rollout is
        replacing); the Service's port must be the container's.
        """
        if target.startswith("svc/"):
            target = "pod/" + self.ready_pod(target.removeprefix("svc/"), namespace)
        proc = subprocess.Popen(
            [str(REPO / ".cluster" / "bin" / "kubectl"), f"--kubeconfig={self.kubeconfig}", "-n", namespace,
             "port-forward", "--address=127.0.0.1", target, f":{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    raise AssertionError(f"port-forward to {target} printed no port in 30 s") from None
                match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
                if match:
                    break
            yield int(match.group(1))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            if proc.poll() not in (0, -15, None) and proc.stderr:
                print(f"port-forward to {target}: {proc.stderr.read()[-500:]}")


def build_images(say, output: Path) -> dict[str, dict]:
    """Build (or reuse) stalk's, Redis's and PostgreSQL's images (`make image`); their refs and archives.

    hack/images.py ends with one `NAME REF ARCHIVE` line per image; they are written to ``output``
    in the images.json shape that `cluster.py load --images` reads.
    """
    proc = subprocess.Popen([sys.executable, str(REPO / "hack" / "images.py")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        say(line.rstrip())
    if proc.wait() != 0:
        pytest.fail("building the images failed (hack/images.py):\n" + "".join(lines[-30:]), pytrace=False)
    images = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("stalk", "redis", "postgres"):
            images[parts[0]] = {"ref": parts[1], "archive": parts[2]}
    assert set(images) == {"stalk", "redis", "postgres"}, "".join(lines[-10:])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(images, indent=2))
    return images


@pytest.fixture(scope="session")
def real_cluster(request) -> Iterator[RealCluster]:
    if os.geteuid() != 0:
        unavailable("a real node needs root (namespaces, cgroups, containerd)")
    missing = real_node.missing_packages()
    if missing:
        unavailable(f"a real node needs Debian packages: {' '.join(missing)} (make system-deps)")
    why = ensure_cluster_binaries(say=lambda line: None)
    if why:
        unavailable(why)
    writer = request.config.get_terminal_writer()
    state_dir = CLUSTERS_DIR / f"pytest-{os.getpid()}-real"
    images_json = CLUSTERS_DIR / f"pytest-{os.getpid()}-images.json"
    images = build_images(say=lambda line: writer.line(f"[images] {line}"), output=images_json)

    up = subprocess.run([sys.executable, str(CLUSTER_PY), "up", "--node", "real", "--state-dir", str(state_dir),
                         "--bin-dir", str(REPO / ".cluster" / "bin")], capture_output=True, text=True)
    cluster = RealCluster(kubeconfig=state_dir / "kubeconfig", state_dir=state_dir, images=images)
    try:
        if up.returncode != 0:
            pytest.fail(f"hack/cluster.py up --node real failed:\n{up.stdout}{up.stderr}", pytrace=False)
        # The line before the last of `up`'s report: where the node's cluster is.
        writer.line(f"[real node] {(up.stdout.strip().splitlines() or [''])[-2:][0]}")
        load = subprocess.run([sys.executable, str(CLUSTER_PY), "load", "--state-dir", str(state_dir),
                               "--images", str(images_json)], capture_output=True, text=True)
        if load.returncode != 0:
            pytest.fail(f"loading the images failed:\n{load.stdout}{load.stderr}", pytrace=False)
        yield cluster
    finally:
        images_json.unlink(missing_ok=True)
        if not cluster.stopped:
            down = cluster.stop()
            if down.returncode != 0:
                pytest.fail(f"hack/cluster.py down failed:\n{down.stdout}{down.stderr}", pytrace=False)


from tests.chart.conftest import HELM, HELM_PLUGINS, _build, helm  # noqa: E402,F401 - the chart tests' helm


@pytest.fixture(scope="session", autouse=False)
def node_helm(helm, real_cluster):
    """The chart tests' helm, pointed at the real node's cluster."""
    if not os.access(HELM, os.X_OK):
        why = _build([str(REPO / "hack" / "tools" / "build.sh"), "helm", str(HELM.parent)], say=lambda line: None)
        if why:
            unavailable(why)
    helm.env["KUBECONFIG"] = str(real_cluster.kubeconfig)
    return helm
