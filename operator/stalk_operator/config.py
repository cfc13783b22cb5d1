"""The operator's settings, read once from ``STALK_*`` variables and ``.env``."""

from __future__ import annotations

import os
import socket

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_identity() -> str:
    # In a pod the hostname is the pod name; the pid keeps two local operators apart in tests.
    return f"{socket.gethostname()}-{os.getpid()}"


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STALK_", env_file=".env", extra="ignore")

    # Namespace holding the leader Lease (the operator's own namespace).
    operator_namespace: str = "default"
    # Namespaces whose TaskQueues this operator manages, comma separated; empty means all.
    watch_namespaces: str = ""

    leader_election: bool = True
    lease_name: str = "stalk-operator"
    # A standby takes over at most lease_duration + renew after the leader stops renewing (< 15 s).
    lease_duration_seconds: float = Field(10.0, gt=0)
    lease_renew_seconds: float = Field(2.0, gt=0)
    identity: str = Field(default_factory=_default_identity)

    # Loopback unless asked: the chart and the kustomize base pass --metrics-host 0.0.0.0 in the pod.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(8090, ge=0, le=65535)

    # Celery remote-control inspection before a scale-down: how long to wait for worker replies.
    inspect_timeout_seconds: float = Field(0.5, gt=0)
    # Waiting, in-flight and oldest wait change every tick under load; write them to status at most
    # this often. Replicas, conditions and decisions are written as soon as they change.
    status_interval_seconds: float = Field(5.0, ge=0)
    # Concurrent API calls: status patches get this many slots, and scale patches (with the reads
    # before them) as many of their own, so a scale never queues behind status writes.
    api_concurrency: int = Field(8, ge=1)
    # Status writes that only refresh measurements, at most this many a second in all (changes of
    # replicas, conditions or decisions are written first and not held to it).
    status_writes_per_second: float = Field(20.0, gt=0)

    @model_validator(mode="after")
    def _check_lease(self) -> OperatorSettings:
        if self.lease_renew_seconds >= self.lease_duration_seconds:
            raise ValueError(
                f"STALK_LEASE_RENEW_SECONDS ({self.lease_renew_seconds}) must be below "
                f"STALK_LEASE_DURATION_SECONDS ({self.lease_duration_seconds}), or the lease expires between renewals"
            )
        return self

    @property
    def namespaces(self) -> list[str]:
        return [n.strip() for n in self.watch_namespaces.split(",") if n.strip()]
