"""/v1/queues: what waits in each queue, from the same reader the operator scales by."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from stalk_api.deps import GatewayDep
from stalk_api.routes.workers import workers_or_503
from stalk_api.schemas import QueuePublic, QueuesPublic, UnconsumedListPublic
from stalk_workers.unconsumed import queue_of_list

router = APIRouter(prefix="/queues", tags=["queues"])


@router.get("", response_model=QueuesPublic, summary="Waiting, in-flight, scheduled and oldest wait per queue")
def list_queues(gateway: GatewayDep) -> QueuesPublic:
    names = gateway.queue_names()
    try:
        stats = gateway.read_queues(names)
    except Exception as exc:  # noqa: BLE001
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the broker is unavailable: {exc}") from exc
    workers = workers_or_503(gateway)
    claimed = set(names).union(*(w.queues for w in workers))
    try:
        unconsumed = gateway.unconsumed(claimed)
    except Exception as exc:  # noqa: BLE001
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the broker is unavailable: {exc}") from exc
    prefix = gateway.settings.broker_key_prefix
    return QueuesPublic(unconsumed=[
        UnconsumedListPublic(list=name, queue=queue_of_list(name[len(prefix):]), messages=count)
        for name, count in sorted(unconsumed.items())
    ], queues=[
        QueuePublic(name=name, waiting=stats[name].waiting, in_flight=stats[name].in_flight,
                    scheduled=stats[name].scheduled, oldest_wait_seconds=stats[name].oldest_wait_seconds,
                    workers=sum(1 for w in workers if name in w.queues))
        for name in names
    ])
