"""Every Kubernetes API permission the operator uses, as data: the single source its RBAC is checked against.

The chart's Role/ClusterRole (charts/stalk/templates/operator/rbac.yaml) and the kustomize installs'
(k8s/cluster-rbac.yaml or k8s/namespaced/rbac.yaml, with k8s/operator/rbac.yaml) grant exactly these, no more, no less (tests/chart/test_render.py,
tests/k8s/test_kustomize.py); tests/operator/test_permissions.py checks that the code makes no client
call missing from ``CLIENT_CALLS`` and that kopf watches exactly ``WATCHED_RESOURCES``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Where a permission must hold.
WATCHED = "watched"  # every namespace whose TaskQueues the operator serves (a Role there, or a ClusterRole)
OWN = "own"  # the operator's own namespace: its leader Lease
CLUSTER = "cluster"  # cluster-scoped objects kopf observes (a ClusterRole in either mode)


@dataclass(frozen=True, order=True)
class Permission:
    group: str  # "" is the core API group
    resource: str  # "deployments/scale" for a subresource
    verb: str


def _p(group: str, resource: str, verb: str) -> Permission:
    return Permission(group, resource, verb)


# The kubernetes client's methods the operator calls (kube.py, leader.py) -> where, and what each needs.
CLIENT_CALLS: Mapping[str, tuple[str, Permission]] = {
    # kube.KubeApi.read_scale: the target's replicas and pod selector, before a scale-down and on a conflict.
    "read_namespaced_deployment_scale": (WATCHED, _p("apps", "deployments/scale", "get")),
    "read_namespaced_stateful_set_scale": (WATCHED, _p("apps", "statefulsets/scale", "get")),
    # kube.KubeApi.patch_scale: the scale itself.
    "patch_namespaced_deployment_scale": (WATCHED, _p("apps", "deployments/scale", "patch")),
    "patch_namespaced_stateful_set_scale": (WATCHED, _p("apps", "statefulsets/scale", "patch")),
    # kube.KubeApi.pod_costs / set_pod_cost: drain-safe scale-down. The patch may change only the
    # deletion-cost annotation: the ValidatingAdmissionPolicy shipped next to the RBAC refuses the rest.
    "list_namespaced_pod": (WATCHED, _p("", "pods", "list")),
    "patch_namespaced_pod": (WATCHED, _p("", "pods", "patch")),
    # kube.KubeApi.patch_status: the only write to a TaskQueue.
    "patch_namespaced_custom_object_status": (WATCHED, _p("stalk.dev", "taskqueues/status", "patch")),
    # kube.KubeApi.event: ScaledUp / ScaledDown / MetricsUnavailable / BrokerInvalid ... on the TaskQueue.
    "create_namespaced_event": (WATCHED, _p("", "events", "create")),
    # kube.KubeApi.read_secret_key: broker.secretKeyRef.
    "read_namespaced_secret": (WATCHED, _p("", "secrets", "get")),
    # leader.LeaseElector: read, renew (a compare-and-swap patch) and create the Lease.
    "read_namespaced_lease": (OWN, _p("coordination.k8s.io", "leases", "get")),
    "patch_namespaced_lease": (OWN, _p("coordination.k8s.io", "leases", "patch")),
    "create_namespaced_lease": (OWN, _p("coordination.k8s.io", "leases", "create")),
}

# Called, but deliberately not granted: the installer creates the Lease (charts/stalk/templates/operator/
# lease.yaml, k8s/operator/lease.yaml), so an operator pod still stopping while the release is removed
# cannot bring it back. LeaseElector creates one only when run with a person's own kubeconfig.
NOT_GRANTED = frozenset({_p("coordination.k8s.io", "leases", "create")})

# The resources kopf watches for the handlers in handlers.py (``kopf.on.event``): kopf lists each,
# then watches from the list's resourceVersion. Event handlers write nothing to the objects (no
# finalizers, no progress annotations) and peering is off (standalone), so nothing else is needed.
WATCHED_RESOURCES = (("stalk.dev", "taskqueues"), ("apps", "deployments"), ("apps", "statefulsets"))
KOPF_WATCH_VERBS = ("list", "watch")

# What kopf 1.45 itself calls besides the watches.
KOPF_CALLS: tuple[tuple[str, Permission], ...] = (
    # Its own warnings (settings.posting.level WARNING) as core v1 Events on the object.
    (WATCHED, _p("", "events", "create")),
    # Its resource observer lists and watches CRDs to notice the TaskQueue CRD appear or change.
    (CLUSTER, _p("apiextensions.k8s.io", "customresourcedefinitions", "list")),
    (CLUSTER, _p("apiextensions.k8s.io", "customresourcedefinitions", "watch")),
)
# Its namespace observer lists and watches namespaces only when it serves a list of namespaces;
# cluster-wide it watches every namespace at once and never reads them.
KOPF_NAMESPACED_CALLS: tuple[tuple[str, Permission], ...] = (
    (CLUSTER, _p("", "namespaces", "list")),
    (CLUSTER, _p("", "namespaces", "watch")),
)


def required(*, cluster_wide: bool) -> dict[str, frozenset[Permission]]:
    """Scope -> the permissions an install must grant there, for a cluster-wide or a namespaced operator."""
    calls = [*CLIENT_CALLS.values(), *KOPF_CALLS, *([] if cluster_wide else KOPF_NAMESPACED_CALLS)]
    calls += [(WATCHED, _p(group, plural, verb)) for group, plural in WATCHED_RESOURCES for verb in KOPF_WATCH_VERBS]
    scopes: dict[str, set[Permission]] = {WATCHED: set(), OWN: set(), CLUSTER: set()}
    for scope, permission in calls:
        if permission not in NOT_GRANTED:
            scopes[scope].add(permission)
    return {scope: frozenset(permissions) for scope, permissions in scopes.items()}


def granted(rules: Iterable[Mapping[str, Any]]) -> set[Permission]:
    """The permissions an RBAC ``rules`` list grants, one per (group, resource, verb) (resourceNames aside)."""
    return {Permission(group, resource, verb)
            for rule in rules for group in rule.get("apiGroups", ())
            for resource in rule.get("resources", ()) for verb in rule.get("verbs", ())}
