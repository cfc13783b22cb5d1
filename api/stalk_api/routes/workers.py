"""/v1/workers: the workers online, from Celery's standard inspection (stalk_workers.inspection)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from stalk_api.deps import GatewayDep
from stalk_api.schemas import WorkerPublic, WorkersPublic
from stalk_workers.inspection import online_workers

router = APIRouter(prefix="/workers", tags=["workers"])


def workers_or_503(gateway) -> list:
    try:
        return online_workers(gateway.celery, timeout=gateway.settings.inspect_timeout_seconds)
    except Exception as exc:  # noqa: BLE001 - the broker is down or unreachable
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the broker is unavailable: {exc}") from exc


@router.get("", response_model=WorkersPublic, summary="Workers online and what they consume")
def list_workers(gateway: GatewayDep) -> WorkersPublic:
    return WorkersPublic(workers=[WorkerPublic(**vars(w)) for w in workers_or_503(gateway)])
