"""/v1/task-types: what may be submitted, and where each goes."""

from __future__ import annotations

from fastapi import APIRouter

from stalk_api.deps import GatewayDep
from stalk_api.schemas import TaskTypePublic, TaskTypesPublic

router = APIRouter(prefix="/task-types", tags=["task types"])


@router.get("", response_model=TaskTypesPublic, summary="Registered tasks that may be submitted")
def list_task_types(gateway: GatewayDep) -> TaskTypesPublic:
    celery = gateway.celery
    types = []
    for name in sorted(celery.tasks):
        if not gateway.submittable(name):
            continue
        task = celery.tasks[name]
        doc = (task.__doc__ or "").strip().splitlines()
        queue = gateway.routed_queue(name)
        types.append(TaskTypePublic(
            name=name,
            queue=queue,
            can_terminate=gateway.can_terminate(queue),
            max_retries=task.max_retries,
            retries_automatically=bool(getattr(task, "autoretry_for", ())),
            description=doc[0] if doc else None,
        ))
    return TaskTypesPublic(task_types=types)
