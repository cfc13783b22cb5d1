"""Proof that the test control plane is a real Kubernetes: real API server
validation, admission and RBAC, real controllers, real scheduling onto kwok nodes.

Every wait polls with a deadline (``poll``); nothing sleeps for a fixed time.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.fixtures.kube import poll

pytestmark = pytest.mark.cluster

# kwok never pulls images; any name works and none is ever fetched.
IMAGE = "registry.invalid/stalk/worker:test"


def labels_for(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name}


def pod_template(name: str, annotations: dict[str, str] | None = None) -> client.V1PodTemplateSpec:
    return client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels=labels_for(name), annotations=annotations),
        spec=client.V1PodSpec(containers=[client.V1Container(
            name="worker", image=IMAGE,
            ports=[client.V1ContainerPort(container_port=8080, name="http")],
            resources=client.V1ResourceRequirements(requests={"cpu": "100m", "memory": "64Mi"}),
        )]),
    )


def is_ready(pod: client.V1Pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
    )


def live_pods(core: client.CoreV1Api, namespace: str, name: str) -> list[client.V1Pod]:
    """Pods of ``name`` that are not being deleted."""
    selector = ",".join(f"{k}={v}" for k, v in labels_for(name).items())
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def raw_request(api: client.ApiClient, method: str, path: str, body: dict | None = None,
                query: list[tuple[str, str]] | None = None) -> tuple[int, dict]:
    """Send a manifest exactly as written.

    The typed client validates bodies against its models and would drop or
    refuse an unknown field before the API server ever sees it.
    """
    method, url, headers, payload, _ = api.param_serialize(
        method, path, query_params=query or [], body=body, auth_settings=["BearerToken"],
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
    )
    response = api.call_api(method, url, headers, payload)
    response.read()
    return response.status, json.loads(response.data)


def wait_ready_pods(core, namespace, name, count, timeout=60) -> list[client.V1Pod]:
    def ready():
        pods = live_pods(core, namespace, name)
        return pods if len(pods) == count and all(is_ready(p) for p in pods) else None
    return poll(ready, timeout=timeout, what=f"{count} Running+Ready pods of {name}")


def test_deployment_rolls_out_on_kwok_nodes_and_scales(kube_api, kube_namespace):
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    ns, name = kube_namespace, "web"
    apps.create_namespaced_deployment(ns, client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=2, selector=client.V1LabelSelector(match_labels=labels_for(name)),
            template=pod_template(name)),
    ))

    # The deployment controller creates a ReplicaSet owned by the Deployment ...
    rs = poll(lambda: apps.list_namespaced_replica_set(ns).items, what="ReplicaSet of the Deployment")[0]
    assert rs.metadata.owner_references[0].kind == "Deployment"
    assert rs.metadata.owner_references[0].name == name

    # ... the replicaset controller creates pods, the scheduler binds them to kwok
    # nodes and kwok reports them Running and Ready with a pod IP.
    pods = wait_ready_pods(core, ns, name, 2)
    for pod in pods:
        assert pod.spec.node_name.startswith("kwok-node-"), pod.spec.node_name
        assert pod.status.pod_ip and ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network("198.18.128.0/17"), \
            pod.status.pod_ip
        assert pod.metadata.owner_references[0].name == rs.metadata.name
        # The ServiceAccount admission plugin mounted a projected token volume.
        assert any(v.projected for v in pod.spec.volumes), "no service-account token volume"
    poll(lambda: (apps.read_namespaced_deployment(name, ns).status.ready_replicas or 0) == 2,
         what="Deployment status readyReplicas=2")

    # The scale subresource is what HPA and `kubectl scale` use.
    apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 4}})
    wait_ready_pods(core, ns, name, 4)
    poll(lambda: apps.read_namespaced_deployment_scale(name, ns).status.replicas == 4,
         what="scale subresource status.replicas=4")
    apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 1}})
    wait_ready_pods(core, ns, name, 1)

    # The endpointslice controller publishes the ready pod behind a Service.
    core.create_namespaced_service(ns, client.V1Service(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1ServiceSpec(selector=labels_for(name), ports=[client.V1ServicePort(port=80, target_port="http")]),
    ))
    discovery = client.DiscoveryV1Api(kube_api)
    pod_ip = live_pods(core, ns, name)[0].status.pod_ip

    def slice_addresses():
        slices = discovery.list_namespaced_endpoint_slice(ns, label_selector=f"kubernetes.io/service-name={name}").items
        return {a for s in slices for e in s.endpoints or [] if e.conditions.ready for a in e.addresses}
    poll(lambda: slice_addresses() == {pod_ip}, what=f"EndpointSlice with ready address {pod_ip}")

    # The garbage collector removes the ReplicaSet and its pods once the Deployment is gone.
    apps.delete_namespaced_deployment(name, ns, propagation_policy="Background")
    poll(lambda: not apps.list_namespaced_replica_set(ns).items and not live_pods(core, ns, name),
         what="garbage collection of the ReplicaSet and its pods")


def test_crd_schema_cel_rule_and_printer_columns(kube_api, kube_namespace, kube_cluster):
    ext = client.ApiextensionsV1Api(kube_api)
    custom = client.CustomObjectsApi(kube_api)
    # CRDs are cluster-scoped: a group unique to this test keeps runs independent.
    group = f"t{uuid.uuid4().hex[:8]}.stalk.test"
    plural = "workerpools"
    crd_name = f"{plural}.{group}"
    schema = {
        "type": "object",
        "properties": {"spec": {
            "type": "object",
            "required": ["queue", "minReplicas", "maxReplicas"],
            "properties": {
                "queue": {"type": "string", "minLength": 1},
                "minReplicas": {"type": "integer", "minimum": 0},
                "maxReplicas": {"type": "integer", "minimum": 1},
            },
            "x-kubernetes-validations": [{
                "rule": "self.minReplicas <= self.maxReplicas",
                "message": "minReplicas must not exceed maxReplicas",
            }],
        }},
    }
    ext.create_custom_resource_definition({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": "workerpool", "kind": "WorkerPool"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": schema},
                "additionalPrinterColumns": [
                    {"name": "Queue", "type": "string", "jsonPath": ".spec.queue"},
                    {"name": "Min", "type": "integer", "jsonPath": ".spec.minReplicas"},
                    {"name": "Max", "type": "integer", "jsonPath": ".spec.maxReplicas"},
                    # Custom columns replace the default ones; Age must be listed to be shown.
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            }],
        },
    })
    try:
        def established():
            crd = ext.read_custom_resource_definition(crd_name)
            return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])
        poll(established, what=f"CRD {crd_name} Established")

        def pool(name, lo, hi):
            return {"apiVersion": f"{group}/v1", "kind": "WorkerPool", "metadata": {"name": name},
                    "spec": {"queue": "emails", "minReplicas": lo, "maxReplicas": hi}}

        # Creating right after Established can still race the API server's discovery; retry until served.
        poll(lambda: custom.create_namespaced_custom_object(group, "v1", kube_namespace, plural, pool("good", 1, 5)),
             what="creating a valid WorkerPool")

        with pytest.raises(ApiException) as err:
            custom.create_namespaced_custom_object(group, "v1", kube_namespace, plural, pool("bad", 7, 2))
        assert err.value.status == 422
        message = json.loads(err.value.body)["message"]
        # The API server's own wording: kind, name, field path, and the rule's message.
        assert f'WorkerPool.{group} "bad" is invalid' in message, message
        assert "spec: Invalid value" in message and "minReplicas must not exceed maxReplicas" in message, message

        # The OpenAPI schema is enforced too, before CEL.
        with pytest.raises(ApiException) as err:
            custom.create_namespaced_custom_object(group, "v1", kube_namespace, plural, pool("neg", -1, 2))
        assert err.value.status == 422
        assert "spec.minReplicas" in err.value.body and "should be greater than or equal to 0" in err.value.body

        table = kube_cluster.kubectl("get", crd_name, namespace=kube_namespace).stdout.splitlines()
        assert table[0].split() == ["NAME", "QUEUE", "MIN", "MAX", "AGE"], table
        assert table[1].split()[:4] == ["good", "emails", "1", "5"], table
    finally:
        ext.delete_custom_resource_definition(crd_name)


def test_server_side_dry_run_with_strict_validation_catches_unknown_field(kube_api, kube_namespace, kube_cluster):
    core = client.CoreV1Api(kube_api)
    manifest = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"concurrency": "4"},
        "dataa": {"typo": "yes"},
    }
    path = f"/api/v1/namespaces/{kube_namespace}/configmaps"
    dry_run_strict = [("dryRun", "All"), ("fieldValidation", "Strict")]
    status, reply = raw_request(kube_api, "POST", path, manifest, dry_run_strict)
    assert status == 400, reply
    assert reply["reason"] == "BadRequest"
    assert 'strict decoding error: unknown field "dataa"' in reply["message"], reply

    # Without the typo the dry run succeeds and still persists nothing.
    del manifest["dataa"]
    status, created = raw_request(kube_api, "POST", path, manifest, dry_run_strict)
    assert status == 201, created
    assert created["data"] == {"concurrency": "4"}
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("settings", kube_namespace)
    assert err.value.status == 404

    # The same check from a manifest file, the way CI validates the Helm chart's output.
    bad_deployment = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: worker}
spec:
  selector: {matchLabels: {app: worker}}
  template:
    metadata: {labels: {app: worker}}
    spec:
      containers:
      - name: worker
        image: registry.invalid/worker
        imagePullPolicyy: Never
"""
    result = kube_cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                                  namespace=kube_namespace, input=bad_deployment, check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.template.spec.containers[0].imagePullPolicyy"' in result.stderr, result.stderr


def test_rbac_forbids_what_the_role_does_not_grant(kube_api, kube_namespace, kube_cluster):
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    ns = kube_namespace
    core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader")))
    rbac.create_namespaced_role(ns, client.V1Role(
        metadata=client.V1ObjectMeta(name="configmap-reader"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list", "watch"])],
    ))
    rbac.create_namespaced_role_binding(ns, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="reader"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="configmap-reader"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=ns)],
    ))
    # A service-account token Secret is filled in by the controller-manager's
    # serviceaccount-token controller: proof that controller runs.
    core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="reader-token", annotations={"kubernetes.io/service-account.name": "reader"}),
        type="kubernetes.io/service-account-token",
    ))
    secret = poll(lambda: (s := core.read_namespaced_secret("reader-token", ns)).data and s.data.get("token") and s,
                  what="token in the service-account token Secret")
    token = base64.b64decode(secret.data["token"]).decode()

    # A client that authenticates as the ServiceAccount, trusting the same CA.
    cfg = client.Configuration()
    cfg.host = kube_api.configuration.host
    cfg.ssl_ca_cert = kube_api.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    with client.ApiClient(cfg) as as_reader:
        reader = client.CoreV1Api(as_reader)
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="visible")))
        # Granted: RBAC is evaluated on every request, but the binding may take a moment to reach the authorizer's cache.
        names = poll(lambda: [c.metadata.name for c in reader.list_namespaced_config_map(ns).items],
                     what="the reader listing configmaps")
        assert "visible" in names

        for forbidden in (
            lambda: reader.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x"))),
            lambda: reader.list_namespaced_secret(ns),
            lambda: reader.list_namespaced_config_map("default"),
        ):
            with pytest.raises(ApiException) as err:
                forbidden()
            assert err.value.status == 403
            assert f'User "system:serviceaccount:{ns}:reader" cannot' in json.loads(err.value.body)["message"]

    # kubectl's view of the same policy (SubjectAccessReview under the hood).
    sa = f"system:serviceaccount:{ns}:reader"
    assert kube_cluster.kubectl("auth", "can-i", "list", "configmaps", f"--as={sa}", namespace=ns).stdout.strip() == "yes"
    denied = kube_cluster.kubectl("auth", "can-i", "delete", "configmaps", f"--as={sa}", namespace=ns, check=False)
    assert denied.stdout.strip() == "no"


def test_pod_deletion_cost_picks_the_cheapest_pod_on_scale_down(kube_api, kube_namespace):
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    ns, name = kube_namespace, "workers"
    apps.create_namespaced_replica_set(ns, client.V1ReplicaSet(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1ReplicaSetSpec(
            replicas=3, selector=client.V1LabelSelector(match_labels=labels_for(name)),
            template=pod_template(name)),
    ))
    # All pods must be Running and Ready first: the controller prefers deleting
    # pending or unready pods before it looks at the deletion cost.
    pods = sorted(p.metadata.name for p in wait_ready_pods(core, ns, name, 3))
    costs = {pods[0]: "100", pods[1]: "-50", pods[2]: "1000"}
    for pod, cost in costs.items():
        core.patch_namespaced_pod(pod, ns, {"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": cost}}})
    # Read back so the annotations are certainly stored before the scale-down request.
    for pod, cost in costs.items():
        assert core.read_namespaced_pod(pod, ns).metadata.annotations["controller.kubernetes.io/pod-deletion-cost"] == cost

    apps.patch_namespaced_replica_set_scale(name, ns, {"spec": {"replicas": 2}})
    remaining = {p.metadata.name for p in wait_ready_pods(core, ns, name, 2)}
    assert remaining == {pods[0], pods[2]}, f"expected the cost -50 pod {pods[1]} to go first; left: {remaining}"

    apps.patch_namespaced_replica_set_scale(name, ns, {"spec": {"replicas": 1}})
    remaining = {p.metadata.name for p in wait_ready_pods(core, ns, name, 1)}
    assert remaining == {pods[2]}, f"expected only the cost 1000 pod {pods[2]} to stay; left: {remaining}"


def test_lease_can_be_created_and_renewed(kube_api, kube_namespace):
    coord = client.CoordinationV1Api(kube_api)
    ns = kube_namespace
    now = dt.datetime.now(dt.timezone.utc)
    lease = coord.create_namespaced_lease(ns, client.V1Lease(
        metadata=client.V1ObjectMeta(name="stalk-operator"),
        spec=client.V1LeaseSpec(holder_identity="operator-a", lease_duration_seconds=15,
                                acquire_time=now, renew_time=now, lease_transitions=0),
    ))
    assert lease.spec.holder_identity == "operator-a"

    # Renewal is an update that carries the resourceVersion the holder last saw.
    stale_version = lease.metadata.resource_version
    renewed_at = now + dt.timedelta(seconds=5)
    lease.spec.renew_time = renewed_at
    renewed = coord.replace_namespaced_lease("stalk-operator", ns, lease)
    assert renewed.spec.renew_time == renewed_at  # MicroTime keeps microseconds
    assert renewed.metadata.resource_version != stale_version

    # A contender acting on the old version loses: optimistic concurrency is what
    # makes a Lease safe for leader election.
    lease.metadata.resource_version = stale_version
    lease.spec.holder_identity = "operator-b"
    with pytest.raises(ApiException) as err:
        coord.replace_namespaced_lease("stalk-operator", ns, lease)
    assert err.value.status == 409
    assert coord.read_namespaced_lease("stalk-operator", ns).spec.holder_identity == "operator-a"
