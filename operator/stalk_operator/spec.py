"""Turn a TaskQueue object (as the API server returns it) into typed, immutable configuration.

Pure: no I/O. The defaults (``defaults.py``) are the CRD's schema defaults, for objects that did not
pass through the API server (tests, old objects).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stalk_operator.defaults import TASKQUEUE_DEFAULTS as DEFAULTS
from stalk_operator.policy import Behavior, ScalingSpec

GROUP = "stalk.dev"
VERSION = "v1alpha1"
PLURAL = "taskqueues"
KIND = "TaskQueue"
API_VERSION = f"{GROUP}/{VERSION}"



class SpecError(ValueError):
    """The TaskQueue's spec cannot be used (the CRD schema should have refused it)."""


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True)
class BrokerTls:
    """spec.broker.tls: the files of a rediss:// broker's TLS, kept in Secrets."""

    ca: SecretKey | None  # the CA bundle that signed the server's certificate; None: the system's
    client_cert_secret: str | None  # a kubernetes.io/tls Secret (tls.crt, tls.key) when the server asks
    cert_reqs: str  # ssl_cert_reqs: required, optional or none


@dataclass(frozen=True)
class SentinelRef:
    """``broker.sentinel``: the primary is the one the Sentinels of ``broker.url`` name ``master_name``."""

    master_name: str
    password: SecretKey | None  # the Sentinels' own password, when they require one


@dataclass(frozen=True)
class BrokerRef:
    url: str | None
    secret_name: str | None
    secret_key: str | None
    key_prefix: str
    tls: BrokerTls | None = None
    sentinel: SentinelRef | None = None


@dataclass(frozen=True)
class TargetRef:
    kind: str  # Deployment | StatefulSet
    name: str
    api_version: str = "apps/v1"


@dataclass(frozen=True)
class TaskQueueConfig:
    namespace: str
    name: str
    uid: str
    generation: int
    queue: str
    broker: BrokerRef
    target: TargetRef
    scaling: ScalingSpec
    poll_seconds: float
    drain: bool

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def parse_taskqueue(body: Mapping[str, Any]) -> TaskQueueConfig:
    """Build the configuration of one TaskQueue from its full object."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    try:
        broker = spec["broker"]
        secret = broker.get("secretKeyRef")
        if bool(broker.get("url")) == bool(secret):
            raise SpecError("broker needs exactly one of url or secretKeyRef")
        target = spec["scaleTargetRef"]
        if target["kind"] not in ("Deployment", "StatefulSet"):
            raise SpecError(f"scaleTargetRef.kind {target['kind']!r} is not Deployment or StatefulSet")
        scaling = ScalingSpec(
            min_replicas=int(spec.get("minReplicas", DEFAULTS["minReplicas"])),
            max_replicas=int(spec["maxReplicas"]),
            tasks_per_replica=int(spec.get("tasksPerReplica", DEFAULTS["tasksPerReplica"])),
            activation_tasks=int(spec.get("activationTasks", DEFAULTS["activationTasks"])),
            max_wait_seconds=_optional_int(spec.get("maxWaitSeconds")),
            scale_up=_behavior(spec.get("scaleUp"), DEFAULTS["scaleUp.stabilizationSeconds"]),
            scale_down=_behavior(spec.get("scaleDown"), DEFAULTS["scaleDown.stabilizationSeconds"]),
            idle_replica_seconds=int((spec.get("scaleDown") or {}).get(
                "idleReplicaSeconds", DEFAULTS["scaleDown.idleReplicaSeconds"])),
            idle_seconds_before_zero=int(spec.get("idleSecondsBeforeZero", DEFAULTS["idleSecondsBeforeZero"])),
            paused=bool(spec.get("paused", DEFAULTS["paused"])),
        )
        if scaling.min_replicas > scaling.max_replicas:
            raise SpecError("minReplicas must be less than or equal to maxReplicas")
        return TaskQueueConfig(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation", 0)),
            queue=spec["queue"],
            broker=BrokerRef(
                url=broker.get("url") or None,
                secret_name=secret["name"] if secret else None,
                secret_key=secret["key"] if secret else None,
                key_prefix=broker.get("keyPrefix", DEFAULTS["broker.keyPrefix"]),
                tls=_tls(broker.get("tls")),
                sentinel=_sentinel(broker.get("sentinel")),
            ),
            target=TargetRef(
                kind=target["kind"],
                name=target["name"],
                api_version=target.get("apiVersion", DEFAULTS["scaleTargetRef.apiVersion"]),
            ),
            scaling=scaling,
            poll_seconds=float(spec.get("pollSeconds", DEFAULTS["pollSeconds"])),
            drain=bool(spec.get("drain", DEFAULTS["drain"])),
        )
    except KeyError as exc:
        raise SpecError(f"spec is missing {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SpecError):
            raise
        raise SpecError(str(exc)) from exc


def _tls(raw: Mapping[str, Any] | None) -> BrokerTls | None:
    if raw is None:
        return None
    ca = raw.get("caSecretRef")
    client = raw.get("clientCertSecretRef")
    return BrokerTls(
        ca=SecretKey(ca["name"], ca.get("key", DEFAULTS["broker.tls.caSecretRef.key"])) if ca else None,
        client_cert_secret=client["name"] if client else None,
        cert_reqs=raw.get("certReqs", DEFAULTS["broker.tls.certReqs"]),
    )


def _sentinel(raw: Mapping[str, Any] | None) -> SentinelRef | None:
    if raw is None:
        return None
    if not raw.get("masterName"):
        raise SpecError("broker.sentinel needs masterName")
    password = raw.get("passwordSecretKeyRef")
    return SentinelRef(master_name=raw["masterName"],
                       password=SecretKey(password["name"], password["key"]) if password else None)


def _behavior(raw: Mapping[str, Any] | None, default_stabilization: int) -> Behavior:
    raw = raw or {}
    max_step = raw.get("maxStep")
    return Behavior(
        stabilization_seconds=int(raw.get("stabilizationSeconds", default_stabilization)),
        max_step=int(max_step) if max_step is not None else None,
    )


def _optional_int(value: Any) -> int | None:
    return int(value) if value is not None else None
