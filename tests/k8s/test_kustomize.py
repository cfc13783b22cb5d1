"""The kustomize installs as `kubectl apply -k k8s/` (cluster-wide) and `kubectl apply -k k8s/namespaced/`
see them: rendered by the built kubectl, hardened like the chart's operator, their image pinned to the
chart's appVersion, their RBAC exactly permissions.py, and admitted by a namespace that enforces the
Pod Security "restricted" level."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from stalk_operator import permissions
from tests.fixtures.kube import ensure_cluster_binaries, poll
from tests.fixtures.kustomize import CLUSTER_WIDE, NAMESPACED, VARIANTS, render
from tests.fixtures.pod_policy import check_only_the_deletion_cost_may_change
from tests.fixtures.servers import unavailable

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

pytestmark = pytest.mark.binaries


# The namespaced overlay rendered for a namespace other than its placeholder: the one line a user edits
# must reach everything that names the namespace.
TEAM = "tracker"


@pytest.fixture(scope="module")
def kubectl_built() -> None:
    why = ensure_cluster_binaries(say=lambda line: None)
    if why:
        unavailable(f"no kubectl: {why}")


@pytest.fixture(scope="module", params=VARIANTS)
def rendered(request, kubectl_built) -> list[dict]:
    """Every object of `kubectl kustomize k8s/`, or of k8s/namespaced/ set to the namespace TEAM."""
    return render(request.param, TEAM if request.param == NAMESPACED else None)


@pytest.fixture(scope="module")
def cluster_wide(kubectl_built) -> list[dict]:
    return render(CLUSTER_WIDE)


def pod_templates(objects: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]) for o in objects if o["kind"] in WORKLOADS]


def test_every_pod_template_runs_as_the_restricted_level_asks(rendered):
    templates = pod_templates(rendered)
    assert templates, "the base has no workload"
    for name, template in templates:
        pod = template["spec"]
        assert pod.get("securityContext", {}).get("seccompProfile") == {"type": "RuntimeDefault"}, name
        assert pod["securityContext"].get("runAsNonRoot") is True, name
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{name} container {container['name']}"
            security = container.get("securityContext", {})
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not security["capabilities"].get("add"), where
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in empty_dirs, f"{where}: /tmp is no emptyDir"


def test_a_disruption_budget_keeps_an_operator_pod_up(rendered):
    budgets = [o for o in rendered if o["kind"] == "PodDisruptionBudget"]
    for name, template in pod_templates(rendered):
        labels = template["metadata"]["labels"]
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert [b["spec"].get("minAvailable") for b in covering] == [1], name


def test_the_image_is_pinned_to_the_charts_app_version(rendered):
    app_version = str(yaml.safe_load((REPO / "charts" / "stalk" / "Chart.yaml").read_text())["appVersion"])
    for name, template in pod_templates(rendered):
        for container in template["spec"]["containers"]:
            repository, _, tag = container["image"].rpartition(":")
            assert (repository, tag) == ("stalk", app_version), f"{name}: {container['image']}"


def test_the_cluster_wide_operators_roles_grant_exactly_the_calls_in_permissions_py(cluster_wide):
    """The base runs one cluster-wide operator: a ClusterRole for what it watches and kopf observes, a Role for its Lease."""
    rendered = cluster_wide
    need = permissions.required(cluster_wide=True)
    roles = {(o["kind"], o["metadata"]["name"]): permissions.granted(o["rules"])
             for o in rendered if o["kind"] in ("Role", "ClusterRole")}
    assert roles == {("ClusterRole", "stalk-operator"): need[permissions.WATCHED] | need[permissions.CLUSTER],
                     ("Role", "stalk-operator-leader"): need[permissions.OWN]}
    # It renews the Lease the base creates (it may not create one), in its own namespace.
    (lease,) = [o for o in rendered if o["kind"] == "Lease"]
    (leader,) = [o for o in rendered if o["kind"] == "Role"]
    assert [r["resourceNames"] for r in leader["rules"]] == [[lease["metadata"]["name"]]]
    assert lease["metadata"]["namespace"] == leader["metadata"]["namespace"] == "stalk-system"
    assert watch_namespaces(rendered) is None  # all namespaces, the default Lease name


def watch_namespaces(rendered: list[dict]) -> dict | None:
    """The operator container's STALK_WATCH_NAMESPACES entry (None: not set, every namespace)."""
    (deployment,) = [o for o in rendered if o["kind"] == "Deployment"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "STALK_LEASE_NAME" not in env
    return env.get("STALK_WATCH_NAMESPACES")


def test_the_namespaced_operators_roles_grant_exactly_the_calls_in_permissions_py(kubectl_built):
    """k8s/namespaced/ serves one namespace: a Role there for what it watches, a Role for its Lease, and
    a read-only ClusterRole for what kopf observes; everything in, bound in and named after that namespace."""
    rendered = render(NAMESPACED, TEAM)
    need = permissions.required(cluster_wide=False)
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): permissions.granted(o["rules"])
             for o in rendered if o["kind"] in ("Role", "ClusterRole")}
    assert roles == {("Role", TEAM, "stalk-operator"): need[permissions.WATCHED],
                     ("Role", TEAM, "stalk-operator-leader"): need[permissions.OWN],
                     ("ClusterRole", None, f"{TEAM}-stalk-operator-discovery"): need[permissions.CLUSTER]}
    bindings = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): (o["roleRef"]["kind"], o["roleRef"]["name"], o["subjects"])
                for o in rendered if o["kind"] in ("RoleBinding", "ClusterRoleBinding")}
    account = [{"kind": "ServiceAccount", "name": "stalk-operator", "namespace": TEAM}]
    assert bindings == {("RoleBinding", TEAM, "stalk-operator"): ("Role", "stalk-operator", account),
                        ("RoleBinding", TEAM, "stalk-operator-leader"): ("Role", "stalk-operator-leader", account),
                        ("ClusterRoleBinding", None, f"{TEAM}-stalk-operator-discovery"):
                            ("ClusterRole", f"{TEAM}-stalk-operator-discovery", account)}
    assert {o["metadata"].get("namespace") for o in rendered if o["kind"] in ("Deployment", "Lease", "ServiceAccount", "PodDisruptionBudget")} == {TEAM}
    # It creates no namespace (the team's exists; `kubectl delete -k` must not remove it) and watches only its own.
    assert not [o for o in rendered if o["kind"] == "Namespace"]
    assert watch_namespaces(rendered) == {"name": "STALK_WATCH_NAMESPACES",
                                          "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    # Cluster-scoped names carry the namespace, so two teams' installs and the cluster-wide one coexist.
    cluster_scoped = {o["kind"]: o["metadata"]["name"] for o in rendered
                      if o["kind"] in ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")}
    assert all(name.startswith(f"{TEAM}-stalk-operator") for name in cluster_scoped.values()), cluster_scoped
    assert not set(cluster_scoped.values()) & {o["metadata"]["name"] for o in render(CLUSTER_WIDE) if "namespace" not in o["metadata"]}


def test_a_pod_policy_holds_the_operators_service_account_to_the_deletion_cost(rendered):
    (policy,) = [o for o in rendered if o["kind"] == "ValidatingAdmissionPolicy"]
    (binding,) = [o for o in rendered if o["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    (account,) = [o for o in rendered if o["kind"] == "ServiceAccount"]
    username = f"system:serviceaccount:{account['metadata']['namespace']}:{account['metadata']['name']}"
    assert [c["expression"] for c in policy["spec"]["matchConditions"]] == [f"request.userInfo.username == '{username}'"]


@pytest.mark.cluster
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variants_pod_policy_lets_its_operator_set_only_the_deletion_cost(variant, kubectl_built, kube_cluster,
                                                                                kube_namespace):
    """Applied as `kubectl apply -k` would (all but the CRD, shared by the session, and the pods): the
    cluster-wide base in stalk-system, the namespaced overlay set to a fresh namespace (its Role there)."""
    kubectl = kube_cluster.kubectl
    namespace = "stalk-system" if variant == CLUSTER_WIDE else kube_namespace
    rendered = render(variant, None if variant == CLUSTER_WIDE else namespace)
    objects = [o for o in rendered if o["kind"] not in {"CustomResourceDefinition", "Deployment", "PodDisruptionBudget"}]
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    kubectl("apply", "--server-side", "-f", "-", input=manifest)
    try:
        poll(lambda: kubectl("get", "serviceaccount", "stalk-operator", namespace=namespace, check=False).returncode == 0,
             timeout=30, what="the operator's ServiceAccount")
        check_only_the_deletion_cost_may_change(kube_cluster, namespace, "stalk-operator")
    finally:
        kubectl("delete", "--wait=false", "--ignore-not-found", "-f", "-", input=manifest)


@pytest.mark.cluster
def test_a_restricted_namespace_admits_the_operator_and_refuses_a_looser_pod(rendered, kube_cluster, kube_namespace):
    kubectl = kube_cluster.kubectl
    kubectl("label", "namespace", kube_namespace, "pod-security.kubernetes.io/enforce=restricted")
    kubectl("create", "serviceaccount", "stalk-operator", namespace=kube_namespace)
    (deployment,) = [o for o in rendered if o["kind"] == "Deployment"]
    deployment = copy.deepcopy(deployment)
    deployment["metadata"]["namespace"] = kube_namespace
    # Pod Security only warns about a workload's template; it enforces on pods.
    applied = kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", namespace=kube_namespace,
                      input=json.dumps(deployment))
    assert "PodSecurity" not in applied.stderr, applied.stderr

    def pod(template: dict) -> str:
        return json.dumps({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": "operator", "namespace": kube_namespace,
                                        "labels": template["metadata"]["labels"]},
                           "spec": template["spec"]})

    template = deployment["spec"]["template"]
    kubectl("create", "--dry-run=server", "-f", "-", namespace=kube_namespace, input=pod(template))

    looser = copy.deepcopy(template)
    del looser["spec"]["securityContext"]["seccompProfile"]
    looser["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    refused = kubectl("create", "--dry-run=server", "-f", "-", namespace=kube_namespace, input=pod(looser),
                      check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr, refused.stderr
