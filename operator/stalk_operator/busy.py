"""Which worker pods are busy, so that a scale-down removes idle ones first.

Celery names a worker node ``<name>@<hostname>`` and in Kubernetes the hostname is the pod name,
so a remote-control ``active()`` reply maps straight onto pods. The matching and the deletion
costs are pure functions; ``CeleryInspector`` is the only part that talks to the broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery

from stalk_workers import redis_tls
from stalk_workers.brokers import sentinel_kwargs

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
# The ReplicaSet controller removes lower costs first: pods whose worker said it is idle, then
# pods whose worker did not answer (a solo-pool worker cannot while it runs a task), then busy
# pods, a pod with more running tasks after one with fewer.
IDLE_COST = -1000
UNKNOWN_COST = 0
BUSY_COST = 1000


def node_pod_name(node: str) -> str:
    """The hostname part of a Celery node name: ``celery@pod-abc`` -> ``pod-abc``."""
    return node.split("@", 1)[1] if "@" in node else node


def active_tasks_by_pod(active: Mapping[str, list[Any]] | None, pod_names: Iterable[str]) -> dict[str, int | None]:
    """Number of running tasks on each of ``pod_names``; None for a pod no worker answered for."""
    counts: dict[str, int | None] = dict.fromkeys(pod_names)
    for node, tasks in (active or {}).items():
        host = node_pod_name(node)
        # A worker started with a fully qualified hostname (pod.svc.cluster.local) still matches.
        for candidate in (host, host.split(".", 1)[0]):
            if candidate in counts:
                counts[candidate] = (counts[candidate] or 0) + len(tasks or ())
                break
    return counts


def deletion_costs(busy: Mapping[str, int | None], current: Mapping[str, str | None]) -> dict[str, str]:
    """Pod -> new cost annotation, only for pods whose annotation must change."""
    changes = {}
    for pod, running in busy.items():
        if running is None:
            cost = str(UNKNOWN_COST)
        else:
            cost = str(BUSY_COST + running if running else IDLE_COST)
        if current.get(pod) != cost:
            changes[pod] = cost
    return changes


class CeleryInspector:
    """Asks the workers of one broker what they run. One Celery app per broker, built once."""

    def __init__(self, broker_url: str, *, key_prefix: str = "", timeout: float = 0.5, master_name: str = "",
                 sentinel_password: str = "") -> None:
        self._app = Celery("stalk-operator-inspect", broker=broker_url, set_as_current=False)
        options: dict = redis_tls.pool_options(broker_url)
        if key_prefix:
            options["global_keyprefix"] = key_prefix
        if master_name:  # a sentinel:// broker: kombu's Sentinel transport finds the primary
            options["master_name"] = master_name
            kwargs = sentinel_kwargs(sentinel_password or None, socket_timeout=timeout + 1,
                                     socket_connect_timeout=timeout + 1)
            if kwargs is not None:
                options["sentinel_kwargs"] = kwargs
        if options:
            self._app.conf.broker_transport_options = options
        self._timeout = timeout

    def active(self) -> dict[str, list[Any]]:
        """Node name -> running tasks, from every worker that answered within the timeout."""
        return self._app.control.inspect(timeout=self._timeout).active() or {}

    def consumed_queues(self) -> set[str]:
        """The queues the workers that answered consume (Celery's standard ``active_queues``)."""
        replies = self._app.control.inspect(timeout=self._timeout).active_queues() or {}
        return {q["name"] for queues in replies.values() for q in queues or () if isinstance(q, dict) and "name" in q}

    def close(self) -> None:
        self._app.close()
