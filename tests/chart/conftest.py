"""Chart tests: the real helm (built from Go modules, see docs/control-plane.md) and, for the
`cluster` tests, the real API server from tests/fixtures/kube.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.fixtures.kube import poll
from tests.fixtures.servers import unavailable

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "stalk"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
HELM = REPO / ".cluster" / "bin" / "helm"
# Under bin/: `cluster.py down` keeps bin/ (links into the build cache) and removes the rest of .cluster/.
HELM_PLUGINS = REPO / ".cluster" / "bin" / "helm-plugins"
# Minimal, schema-less CRDs of the Prometheus Operator kinds the chart renders (see fixtures/).
MONITORING_CRDS = Path(__file__).parent / "fixtures" / "monitoring-crds.yaml"
CRD = CHART / "crds" / "taskqueues.stalk.dev.yaml"
RELEASE = "stalk"
# Any image: kwok never pulls it.
IMAGE = ["--set", "image.repository=registry.invalid/stalk", "--set", "image.tag=test"]
# The Secret a user of ci/03-external-services-values.yaml creates before installing.
EXTERNAL_SECRET = {
    "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "stalk-external"},
    "stringData": {"broker-url": "redis://:pw@redis.example:6379/0", "result-backend-url": "redis://:pw@redis.example:6379/1",
                   "database-url": "postgresql+psycopg://stalk:pw@db.example:5432/stalk", "api-tokens": "t0ken\n"},
}



def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs the Kubernetes test control plane (make cluster-bins)")


def _build(cmd: list[str], say) -> str | None:
    if shutil.which("go") is None:
        return f"no Go toolchain to run {' '.join(cmd)}"
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        say(line)
    return None if proc.returncode == 0 else f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"


def pytest_collection_modifyitems(session, config, items):
    # A cold build of helm takes minutes, longer than a test's timeout: do it before the tests start.
    if not any(str(item.path).startswith(str(Path(__file__).parent)) for item in items):
        return
    if os.environ.get("STALK_BINARIES_BUILD"):
        return  # `make test` builds them in the background (tests/fixtures/binaries.py)
    writer = config.get_terminal_writer()
    say = lambda line: writer.line(f"[chart binaries] {line}")  # noqa: E731
    if not os.access(HELM, os.X_OK):
        _build([str(REPO / "hack" / "tools" / "build.sh"), "helm", str(HELM.parent)], say)
    if not (HELM_PLUGINS / "unittest" / "plugin.yaml").exists():
        _build([str(REPO / "hack" / "tools" / "helm-unittest" / "build.sh"), str(HELM_PLUGINS / "unittest")], say)


@dataclass
class Helm:
    """The built helm; output is text. Runs with its own empty config/cache dirs."""

    binary: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.binary), *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr.strip()}")
        return proc

    def template(self, *args: str, values: list[Path] = (), sets: dict[str, str] | None = None,
                 api_versions: list[str] = (), release: str = "stalk", namespace: str = "stalk") -> list[dict]:
        """Render the chart and return its objects (hooks and tests included)."""
        cmd = ["template", release, str(CHART), "--namespace", namespace]
        for f in values:
            cmd += ["-f", str(f)]
        for key, value in (sets or {}).items():
            cmd += ["--set", f"{key}={value}"]
        for api in api_versions:
            cmd += ["--api-versions", api]
        out = self.run(*cmd, *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Iterator[Helm]:
    if not os.access(HELM, os.X_OK):
        unavailable(f"helm missing in {HELM.parent} and it could not be built (make chart-bins)")
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ, HELM_CONFIG_HOME=str(home / "config"), HELM_CACHE_HOME=str(home / "cache"),
               HELM_DATA_HOME=str(home / "data"), HELM_PLUGINS=str(HELM_PLUGINS))
    env.pop("KUBECONFIG", None)
    yield Helm(binary=HELM, env=env)


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    """Objects of one kind, by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@pytest.fixture(scope="session")
def crds(kube_cluster):
    """The TaskQueue CRD (as the chart ships it) and the schema-less monitoring CRDs, established."""
    for path in (CRD, MONITORING_CRDS):
        kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    names = ["taskqueues.stalk.dev", "servicemonitors.monitoring.coreos.com", "podmonitors.monitoring.coreos.com",
             "prometheusrules.monitoring.coreos.com"]
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    return kube_cluster


@pytest.fixture
def helm_kube(helm, kube_cluster):
    """helm pointed at the test cluster."""
    helm.env["KUBECONFIG"] = str(kube_cluster.kubeconfig)
    return helm


# --- shared by the chart's cluster tests and the real node's (tests/node) ---

def restrict_pod_security(kube, namespace: str) -> None:
    """Pod Security Admission at the "restricted" level: it rejects non-compliant pods and warns about templates."""
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/warn=restricted",
                 "pod-security.kubernetes.io/enforce=restricted")


def uninstall_leaves_only_the_crd(helm_kube, kube, ns, keep: set[tuple[str, str]] = frozenset()):
    """`helm uninstall` removes every object of the release in `ns`, its cluster roles and pod policy; the CRD stays."""
    helm_kube.run("uninstall", RELEASE, "--namespace", ns, "--wait", "--timeout", "120s")
    namespaced = kube.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout.split()
    # What Kubernetes itself puts in every namespace, and what the test created itself.
    expected = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt"), *keep}
    skip = {"events", "events.events.k8s.io"}

    def nothing_left():
        items = _kubectl_json(kube, "get", ",".join(r for r in namespaced if r not in skip), namespace=ns)["items"]
        left = [(i["kind"], i["metadata"]["name"]) for i in items if (i["kind"], i["metadata"]["name"]) not in expected]
        assert not left, f"left behind: {left}"
        return True

    poll(nothing_left, timeout=120, what="the release's objects to be gone")
    cluster_scoped = _kubectl_json(kube, "get", "clusterroles,clusterrolebindings,validatingadmissionpolicies,"
                                   "validatingadmissionpolicybindings", namespace=None)["items"]
    assert [i["metadata"]["name"] for i in cluster_scoped if i["metadata"]["name"].startswith(f"{ns}-")] == []
    kube.kubectl("get", "crd", "taskqueues.stalk.dev")


def _kubectl_json(kube, *args, namespace):
    return json.loads(kube.kubectl(*args, "-o", "json", namespace=namespace).stdout)
