"""The chart's pod admission policy on the real API server: the operator's ServiceAccount, with the
chart's RBAC, may set a pod's deletion cost and nothing else; `admissionPolicy.enabled=false` leaves
it as RBAC alone would. The operator's own scale-down through the policy is in test_operator_with_chart.py."""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from stalk_operator.kube import MERGE_PATCH
from tests.chart.conftest import CHART, IMAGE, RELEASE
from tests.fixtures.pod_policy import check_only_the_deletion_cost_may_change, operator_api, pod_manifest

pytestmark = pytest.mark.cluster


def test_the_operators_service_account_may_set_the_deletion_cost_and_nothing_else(crds, helm_kube, kube_namespace):
    ns, kube = kube_namespace, crds
    helm_kube.run("install", RELEASE, str(CHART), "--namespace", ns, *IMAGE)  # no --wait: only the RBAC and the policy matter
    try:
        check_only_the_deletion_cost_may_change(kube, ns, "stalk-operator")
    finally:
        helm_kube.run("uninstall", RELEASE, "--namespace", ns, "--wait", "--timeout", "120s")
    left = kube.kubectl("get", "validatingadmissionpolicies,validatingadmissionpolicybindings", "-o", "name").stdout
    assert f"{ns}-" not in left, f"helm uninstall left {left}"


def test_without_the_policy_rbac_alone_lets_the_operator_relabel_a_pod(crds, helm_kube, kube_namespace):
    """The check above can fail: the same label change goes through when the policy is off."""
    ns, kube = kube_namespace, crds
    helm_kube.run("install", RELEASE, str(CHART), "--namespace", ns, *IMAGE,
                  "--set", "operator.admissionPolicy.enabled=false")
    try:
        kube.kubectl("create", "-f", "-", namespace=ns, input=pod_manifest("worker-0"))
        api = operator_api(kube, f"system:serviceaccount:{ns}:stalk-operator")
        try:
            client.CoreV1Api(api).patch_namespaced_pod("worker-0", ns, {"metadata": {"labels": {"stalk.dev/picked": "yes"}}},
                                                       _content_type=MERGE_PATCH)
        finally:
            api.close()
        labels = json.loads(kube.kubectl("get", "pod", "worker-0", "-o", "json", namespace=ns).stdout)["metadata"]["labels"]
        assert labels["stalk.dev/picked"] == "yes"
    finally:
        helm_kube.run("uninstall", RELEASE, "--namespace", ns, "--wait", "--timeout", "120s")
