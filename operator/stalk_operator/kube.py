"""Every call the operator makes to the API server, on clients built once.

The kubernetes client is synchronous; the tick loop calls these through ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from stalk_operator.busy import DELETION_COST_ANNOTATION
from stalk_operator.spec import GROUP, KIND, PLURAL, VERSION, API_VERSION, TaskQueueConfig

log = logging.getLogger(__name__)

# kubernetes client 37 picks JSON patch for every PATCH unless told otherwise.
MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "stalk-operator"


@dataclass(frozen=True)
class Scale:
    replicas: int
    selector: str  # label selector of the target's pods, from the scale subresource's status


def load_api_client(connections: int) -> client.ApiClient:
    """In a pod: the service account. Elsewhere: KUBECONFIG or ~/.kube/config.

    ``connections``: the API calls that may run at once. The client's pool otherwise holds
    CPUs x 5 connections and opens and discards extra ones (a TLS handshake each) beyond that.
    """
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, connections)
    return client.ApiClient(configuration)


class KubeApi:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.coordination = client.CoordinationV1Api(api_client)

    # The target's scale subresource: works the same for a Deployment and a StatefulSet.
    def read_scale(self, namespace: str, kind: str, name: str) -> Scale | None:
        read = (self.apps.read_namespaced_deployment_scale if kind == "Deployment"
                else self.apps.read_namespaced_stateful_set_scale)
        try:
            scale = read(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return Scale(replicas=scale.spec.replicas or 0, selector=scale.status.selector or "")

    def patch_scale(self, namespace: str, kind: str, name: str, replicas: int) -> str | None:
        """Set the target's replicas; returns the target's new resourceVersion."""
        patch = (self.apps.patch_namespaced_deployment_scale if kind == "Deployment"
                 else self.apps.patch_namespaced_stateful_set_scale)
        scale = patch(name, namespace, {"spec": {"replicas": replicas}}, _content_type=MERGE_PATCH)
        return scale.metadata.resource_version

    def pod_costs(self, namespace: str, selector: str) -> dict[str, str | None]:
        """Running pods of a target -> their current deletion-cost annotation."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector)
        return {
            pod.metadata.name: (pod.metadata.annotations or {}).get(DELETION_COST_ANNOTATION)
            for pod in pods.items
            if pod.metadata.deletion_timestamp is None
        }

    def set_pod_cost(self, namespace: str, pod: str, cost: str) -> None:
        body = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost}}}
        try:
            self.core.patch_namespaced_pod(pod, namespace, body, _content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status != 404:  # a pod that is gone needs no cost
                raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge ``status`` into the TaskQueue's status; False if the TaskQueue is gone."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def event(self, tq: TaskQueueConfig, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the TaskQueue, as `kubectl describe tq` shows them."""
        now = datetime.now(timezone.utc)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{tq.name}.", namespace=tq.namespace),
            involved_object=client.V1ObjectReference(
                api_version=API_VERSION, kind=KIND, name=tq.name, namespace=tq.namespace, uid=tq.uid or None,
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT,
        )
        try:
            self.core.create_namespaced_event(tq.namespace, body)
        except ApiException as exc:
            # An event is a courtesy: never let it stop a scale.
            log.warning("event %s on %s/%s not posted: %s", reason, tq.namespace, tq.name, exc.reason)

    def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        value = (secret.data or {}).get(key)
        return base64.b64decode(value).decode() if value is not None else None
