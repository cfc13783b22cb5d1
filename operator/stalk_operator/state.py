"""What the operator holds in memory: the TaskQueues it manages and the workloads they scale.

Both are filled from kopf's watch events (standby operators keep them warm too) and read by the
tick loop. Nothing here does I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from stalk_operator.policy import History
from stalk_operator.spec import TaskQueueConfig
from stalk_operator.status import METRICS_AVAILABLE, condition_status

log = logging.getLogger(__name__)


@dataclass(eq=False)
class TaskQueueState:
    config: TaskQueueConfig
    history: History
    # The status as last written by us (or found on the object at first sight).
    status: dict[str, Any]
    status_written_at: float = float("-inf")
    # Set by the tick loop: the Redis URL in use (from spec.broker.url or the Secret).
    broker_url: str | None = None
    broker_checked_at: float = float("-inf")
    # The URL as written (spec or Secret); broker_url adds spec.broker.tls's files to a rediss:// one.
    broker_source: str | None = None
    tls_checked_at: float = float("-inf")
    # The Sentinels' password, from broker.sentinel.passwordSecretKeyRef, when it names one.
    sentinel_password: str | None = field(default=None, repr=False)
    sentinel_checked_at: float = float("-inf")
    # Why the broker cannot be used (reason, message); None when it can.
    broker_problem: tuple[str, str] | None = None
    target_checked_at: float = float("-inf")
    # Why the target cannot be scaled (reason, message), as last looked up; None when it was found.
    target_problem: tuple[str, str] | None = None
    # Set when another TaskQueue names the same workload (then neither scales it).
    target_conflict: str | None = None
    last_scale_time: str | None = None
    # This TaskQueue's Prometheus series, looked up once (set by the tick loop).
    series: Any = None
    # The status on the object as the watch last delivered it: what a new leader resumes from.
    seen_status: dict[str, Any] = field(default_factory=dict)
    # The target's pods as last inspected before a scale-down (see kube_actuator.KubeActuator).
    busy: Any = None
    busy_checked_at: float = float("-inf")
    # The desired status (status.DesiredStatus) last written (None: not yet, or resumed from the
    # object), and the one waiting for the status writer with the tick time it was found at.
    desired_written: Any = None
    pending: Any = None
    pending_urgent: bool = False
    # MetricsAvailable is False (or was, on the object at first sight): a good read says so once.
    metrics_down: bool = False
    # The reason of the fault last announced with a Warning event; None once the TaskQueue scales again.
    fault: str | None = None

    def __post_init__(self) -> None:
        self.metrics_down = _metrics_down(self.status)

    def announce(self, reason: str) -> bool:
        """Record a fault of this TaskQueue; True when it is new (a Warning event is due), so a fault
        that lasts is announced once, not every tick."""
        new, self.fault = self.fault != reason, reason
        return new

    def resume_from_seen(self) -> None:
        """Take over status and history from the object, as another leader left them."""
        self.status = dict(self.seen_status)
        self.history = resumed_history(self.status, self.config.key)
        self.last_scale_time = self.status.get("lastScaleTime")
        self.status_written_at = float("-inf")
        self.desired_written, self.pending, self.pending_urgent = None, None, False
        self.metrics_down = _metrics_down(self.status)


def resumed_history(status: Mapping[str, Any], key: tuple[str, str]) -> History:
    """The history another decider left in ``status.policyHistory``, to continue from.

    One it cannot read (edited by hand, or a format this release does not know) is dropped with a
    warning: an empty resumed history keeps the replicas it finds for one stabilization window
    (``policy.decide``), so nothing is scaled down because of it.
    """
    try:
        return History.resume(status.get("policyHistory"))
    except ValueError as exc:
        log.warning("TaskQueue %s/%s: status.policyHistory ignored: %s", *key, exc)
        return History.resume(None)


def _metrics_down(status: Mapping[str, Any]) -> bool:
    conditions = status.get("conditions")
    return isinstance(conditions, list) and condition_status(conditions, METRICS_AVAILABLE) == "False"


class Registry:
    """TaskQueues by (namespace, name)."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], TaskQueueState] = {}

    def upsert(self, config: TaskQueueConfig, status: Mapping[str, Any] | None) -> TaskQueueState:
        state = self._items.get(config.key)
        if state is not None and state.config.uid == config.uid:
            if config.broker != state.config.broker:
                state.broker_checked_at = float("-inf")  # resolve the new broker on the next tick
                state.broker_source = None
            state.config = config
            state.seen_status = dict(status or {})
            return state
        # First sight (or recreated under the same name): resume from what status kept.
        status = dict(status or {})
        history = resumed_history(status, config.key) if status.get("policyHistory") else History()
        state = TaskQueueState(config=config, history=history, status=status,
                               last_scale_time=status.get("lastScaleTime"), seen_status=dict(status))
        self._items[config.key] = state
        return state

    def remove(self, key: tuple[str, str]) -> TaskQueueState | None:
        return self._items.pop(key, None)

    def get(self, key: tuple[str, str]) -> TaskQueueState | None:
        return self._items.get(key)

    def __iter__(self) -> Iterator[TaskQueueState]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class Target:
    replicas: int
    ready_replicas: int
    resource_version: int


@dataclass
class TargetCache:
    """Deployments and StatefulSets by (namespace, kind, name), from the watch."""

    _items: dict[tuple[str, str, str], Target] = field(default_factory=dict)

    def observe(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), kind, meta.get("name", ""))
        if event_type == "DELETED":
            self._items.pop(key, None)
            return
        version = _int(meta.get("resourceVersion"))
        known = self._items.get(key)
        # A watch event older than our own scale patch would undo what we just wrote.
        if known is not None and version < known.resource_version:
            return
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        self._items[key] = Target(
            replicas=int(spec.get("replicas", 1)),  # the API server defaults an unset replicas to 1
            ready_replicas=int(status.get("readyReplicas") or 0),
            resource_version=version,
        )

    def expect(self, namespace: str, kind: str, name: str, replicas: int, resource_version: str | None) -> None:
        """Record our own scale patch before its watch event arrives."""
        key = (namespace, kind, name)
        known = self._items.get(key)
        self._items[key] = Target(
            replicas=replicas,
            ready_replicas=known.ready_replicas if known else 0,
            resource_version=_int(resource_version),
        )

    def get(self, namespace: str, kind: str, name: str) -> Target | None:
        return self._items.get((namespace, kind, name))


def _int(value: Any) -> int:
    # resourceVersions are opaque strings; in practice etcd revisions. Unknown compares as oldest.
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
