"""Leader election with a ``coordination.k8s.io/v1`` Lease: only the leader scales.

Like client-go's leaderelection, expiry is judged by when *this* process last saw the lease
record change, not by the renew time written in it, so clocks of two machines need not agree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from kubernetes.client import CoordinationV1Api
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

# client 37 would otherwise send a dict body as a JSON patch.
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class LeaseRecord:
    holder: str | None
    renew_time: str | None
    transitions: int
    resource_version: str | None


def may_acquire(record: LeaseRecord | None, *, identity: str, observed_at: float | None,
                now: float, duration: float) -> bool:
    """Whether ``identity`` may write itself into the lease now."""
    if record is None or not record.holder or record.holder == identity:
        return True
    # Another holder: take over only once its record has not moved for a whole lease duration.
    return observed_at is not None and now - observed_at >= duration


def _micro_time(timestamp: float) -> str:
    # Lease times are MicroTime: RFC 3339 with exactly six fractional digits.
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        api: CoordinationV1Api,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration_seconds: float = 10.0,
        renew_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self._duration = duration_seconds
        self._renew = renew_seconds
        self._clock = clock
        self._wall = wall_clock
        self._on_change = on_change
        self._observed: LeaseRecord | None = None
        self._observed_at: float | None = None
        self._renewed_at: float | None = None
        self._leading = False

    @property
    def is_leader(self) -> bool:
        # Stop acting a renew interval before others may take over, even if no renewal came back.
        if not self._leading or self._renewed_at is None:
            return False
        return self._clock() - self._renewed_at < self._duration - self._renew

    async def run(self) -> None:
        try:
            while True:
                try:
                    leading = await asyncio.to_thread(self.try_acquire_or_renew)
                except Exception as exc:  # noqa: BLE001 - an API hiccup must not end the election
                    log.warning("lease %s/%s: cannot reach the API server: %s", self.namespace, self.name, exc)
                    leading = self.is_leader
                self._set_leading(leading)
                await asyncio.sleep(self._renew)
        finally:
            if self._leading:
                await asyncio.shield(asyncio.to_thread(self.release))
            self._set_leading(False)

    def _set_leading(self, leading: bool) -> None:
        if leading != self._leading:
            log.info("lease %s/%s: %s", self.namespace, self.name,
                     "became the leader" if leading else "is not the leader")
            self._leading = leading
            if self._on_change:
                self._on_change(leading)

    def try_acquire_or_renew(self) -> bool:
        """One round of the election; True if this process holds the lease afterwards."""
        now = self._clock()
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return self._create(now)
        record = LeaseRecord(
            holder=lease.spec.holder_identity if lease.spec else None,
            renew_time=str(lease.spec.renew_time) if lease.spec and lease.spec.renew_time else None,
            transitions=(lease.spec.lease_transitions or 0) if lease.spec else 0,
            resource_version=lease.metadata.resource_version,
        )
        if record != self._observed:
            self._observed, self._observed_at = record, now
        if not may_acquire(record, identity=self.identity, observed_at=self._observed_at,
                           now=now, duration=self._duration):
            return False
        taking_over = record.holder != self.identity
        wall = _micro_time(self._wall())
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self._duration)),
            "renewTime": wall,
        }
        if taking_over:
            spec["acquireTime"] = wall
            spec["leaseTransitions"] = record.transitions + (1 if record.holder else 0)
        body = {"metadata": {"resourceVersion": record.resource_version}, "spec": spec}
        try:
            # resourceVersion makes this a compare-and-swap: of two standbys, one wins.
            self._api.patch_namespaced_lease(self.name, self.namespace, body, _content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        self._renewed_at = now
        return True

    def _create(self, now: float) -> bool:
        wall = _micro_time(self._wall())
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self._duration)),
                "acquireTime": wall,
                "renewTime": wall,
                "leaseTransitions": 0,
            },
        }
        try:
            self._api.create_namespaced_lease(self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:  # another instance created it first
                return False
            raise
        self._renewed_at = now
        return True

    def release(self) -> None:
        """Give the lease up on shutdown so that a standby takes over at once."""
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                self._api.patch_namespaced_lease(self.name, self.namespace, {
                    "metadata": {"resourceVersion": lease.metadata.resource_version},
                    "spec": {"holderIdentity": None, "renewTime": None, "acquireTime": None},
                }, _content_type=MERGE_PATCH)
        except ApiException as exc:
            log.warning("lease %s/%s: could not release: %s", self.namespace, self.name, exc.reason)
