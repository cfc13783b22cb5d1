"""/v1/tasks: submit, follow, list, retry and cancel tasks."""

from __future__ import annotations

import functools
import json
from collections import Counter
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BeforeValidator, TypeAdapter
from pydantic_core import PydanticSerializationError
from starlette.concurrency import run_in_threadpool

from stalk_api import submission
from stalk_api.deps import DatabaseDep, GatewayDep, MetricsDep
from stalk_api.schemas import (
    BatchCreate,
    BatchSubmitted,
    Problem,
    TaskCreate,
    TaskError,
    TaskPublic,
    TasksPublic,
    TaskStatus,
    TaskSubmitted,
    json_problem,
)
from stalk_workers.records import store
from stalk_workers.records.models import FAILURE, FINAL_STATES, REVOKED, STARTED, TaskRecord

router = APIRouter(prefix="/tasks", tags=["tasks"])

ERRORS = {
    400: {"model": Problem, "description": "The request is well-formed but cannot be accepted."},
    401: {"model": Problem, "description": "Missing or invalid bearer token."},
    404: {"model": Problem, "description": "No such task, or the task name is not registered."},
    409: {"model": Problem, "description": "The request conflicts with the task's state."},
    413: {"model": Problem, "description": "The request body is too large."},
    503: {"model": Problem, "description": "Redis or the database is unavailable; nothing was changed."},
}
# The routes that read a body (``main.not_json`` writes the 415).
BODY_ERRORS = {**ERRORS, 415: {"model": Problem, "description": "The body was not sent as JSON "
                                                                  "(Content-Type: application/json)."}}


def submitted(record: TaskRecord | submission.Submitted) -> TaskSubmitted:
    # model_construct: no validation, the values come from our own record.
    return TaskSubmitted.model_construct(task_id=record.task_id, status=record.status, task=record.task_name,
                                         queue=record.queue, created_at=store.as_utc(record.created_at),
                                         retry_of=record.retry_of)


def public(record: TaskRecord, *, repair: bool = False) -> TaskPublic:
    """A record as the API shows it. ``repair``: for a record that would not serialize (written
    before arguments were checked, or a result a worker stored): odd values shown empty and named
    in ``unreadable``, broken text with its surrogates escaped, instead of a 500 for every page
    that holds it."""
    started, finished = store.as_utc(record.started_at), store.as_utc(record.finished_at)
    values = {"args": record.args or [], "kwargs": record.kwargs or {}, "result": record.result}
    texts = {"message": record.error_message, "traceback": record.traceback}
    unreadable = []
    if repair:
        for name, empty in (("args", []), ("kwargs", {}), ("result", None)):
            if json_problem(values[name]):
                values[name] = empty
                unreadable.append(name)
        texts = {k: v.encode("utf-8", "backslashreplace").decode() if v else v for k, v in texts.items()}
    error = None
    if record.error_type or record.error_message:
        error = TaskError(type=record.error_type, traceback=texts["traceback"], message=texts["message"])
    return TaskPublic(
        task_id=record.task_id, task=record.task_name, status=record.status, queue=record.queue,
        priority=record.priority, eta=store.as_utc(record.eta), error=error, retries=record.retries,
        dead_lettered=record.dead_lettered, worker=record.worker, retry_of=record.retry_of, source=record.source,
        created_at=store.as_utc(record.created_at), started_at=started, finished_at=finished,
        recovered=record.recovered or 0, recovered_at=store.as_utc(record.recovered_at),
        runtime_seconds=(finished - started).total_seconds() if started and finished else None,
        unreadable=unreadable, **values,
    )


_ODD = (ValueError, RecursionError, PydanticSerializationError)


def shown(records: list[TaskRecord], page) -> str:
    """``page(tasks)`` as JSON; the few records that do not serialize are repaired, not a 500."""
    try:
        return page([public(r) for r in records]).model_dump_json()
    except _ODD:
        return page([public(r, repair=True) for r in records]).model_dump_json()


IDEMPOTENCY_KEY_MAX = 255
IDEMPOTENCY_KEY_DOC = {"name": "Idempotency-Key", "in": "header", "required": False,
                       "description": "Same key, same task.", "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX}}


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=TaskSubmitted, responses=BODY_ERRORS,
             summary="Submit a task", openapi_extra={"parameters": [IDEMPOTENCY_KEY_DOC]})
async def submit_task(body: TaskCreate, request: Request) -> Response:
    # The busiest route: the header and the app state are read directly, and the answer is
    # serialized once, here, instead of through FastAPI's per-request parameter and dependency
    # resolution (a Header parameter alone cost ~10% of the request) and a response model
    # validated again.
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and len(idempotency_key) > IDEMPOTENCY_KEY_MAX:
        raise RequestValidationError([{"loc": ("header", "idempotency-key"), "type": "string_too_long",
                                       "msg": f"String should have at most {IDEMPOTENCY_KEY_MAX} characters"}])
    gateway: submission.Gateway = request.app.state.gateway
    headers = {}
    if idempotency_key is not None:
        record, replayed = await gateway.database.call(
            functools.partial(submission.submit, gateway, body, idempotency_key=idempotency_key))
        if replayed:
            headers["Idempotent-Replayed"] = "true"
    else:
        # Without a key, submissions arriving together share one commit and one Redis pipeline.
        record, replayed = await gateway.committer.submit(submission.prepare(gateway, body)), False
    if not replayed:
        request.app.state.metrics.submitted.labels(record.task_name, record.queue).inc()
    headers["Location"] = f"/v1/tasks/{record.task_id}"
    return Response(submitted(record).model_dump_json(), status.HTTP_202_ACCEPTED, headers,
                    media_type="application/json")


@router.post("/batch", status_code=status.HTTP_202_ACCEPTED, response_model=BatchSubmitted, responses=BODY_ERRORS,
             summary="Submit many tasks in one request")
async def submit_batch(body: BatchCreate, gateway: GatewayDep, metrics: MetricsDep) -> Response:
    # By the writer (stalk_api/writer.py), like the group commits of single submissions: one at a
    # time in this process (a batch on a thread of its own waited for the group commits in SQLite's
    # busy handler, which sleeps 1-100 ms between tries), and on PostgreSQL the loop free meanwhile.
    limit = gateway.settings.max_batch_tasks
    if len(body.tasks) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            f"a batch holds at most {limit} tasks; this one has {len(body.tasks)}")
    records = await gateway.writer.run(submission.submit_batch, gateway, body.tasks)
    for (task_name, queue), count in Counter((r.task_name, r.queue) for r in records).items():
        metrics.submitted.labels(task_name, queue).inc(count)
    return Response(batch_answer(records), status.HTTP_202_ACCEPTED, media_type="application/json")


_TIME = TypeAdapter(datetime)


def batch_answer(records: list[submission.Submitted]) -> str:
    """``BatchSubmitted`` as JSON, as ``model_dump_json`` writes it, from plain dicts: a thousand
    ``TaskSubmitted`` models cost ~2 µs each, a third of what is left of a batched task's CPU in
    this process. The time is serialized by pydantic, once per distinct value (once per batch)."""
    times: dict[tuple, str] = {}

    def at(moment: datetime) -> str:
        key = (moment, moment.utcoffset())  # equal instants in two zones are written differently
        text = times.get(key)
        if text is None:
            text = times[key] = _TIME.dump_python(store.as_utc(moment), mode="json")
        return text

    return json.dumps({"tasks": [
        {"task_id": r.task_id, "status": r.status, "task": r.task_name, "queue": r.queue,
         "created_at": at(r.created_at), "retry_of": r.retry_of}
        for r in records
    ]}, separators=(",", ":"), ensure_ascii=False)


def _iso_8601(value):
    # pydantic also takes "1700000000" (a Unix time) for a datetime; the document says ISO 8601.
    if isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("a time must be ISO 8601, e.g. 2026-01-01T12:00:00Z")
    return value


Moment = Annotated[datetime, BeforeValidator(_iso_8601)]


def _json(model) -> Response:
    return Response(model, media_type="application/json")


@router.get("", response_model=TasksPublic, responses=ERRORS, summary="List tasks, newest first")
async def list_tasks(
    database: DatabaseDep,
    status_: Annotated[TaskStatus | None, Query(alias="status")] = None,
    queue: str | None = None,
    task: str | None = None,
    dead_lettered: bool | None = None,
    created_after: Annotated[Moment | None, Query(description="ISO 8601; without a zone, UTC.")] = None,
    created_before: Annotated[Moment | None, Query(description="ISO 8601; without a zone, UTC.")] = None,
    id_prefix: Annotated[str | None, Query(min_length=1, max_length=255,
                                           description="Only tasks whose id starts with this, in any case.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Response:
    where = store.TaskFilter(status=status_, queue=queue, task_name=task, dead_lettered=dead_lettered,
                             created_after=created_after, created_before=created_before, id_prefix=id_prefix)

    def page(session) -> str:
        # Serialized on the worker thread too: a page of 500 records is milliseconds of CPU.
        rows, next_cursor = store.list_page(session, where=where, limit=limit, cursor=cursor)
        return shown(rows, lambda tasks: TasksPublic(tasks=tasks, next_cursor=next_cursor))

    try:
        return _json(await database.run(page))
    except store.BadCursor as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc


def _one(tasks: list[TaskPublic]) -> TaskPublic:
    return tasks[0]


def _get_or_404(session, task_id: str) -> TaskRecord:
    record = store.get(session, task_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task with id {task_id!r}")
    return record


@router.get("/{task_id}", response_model=TaskPublic, responses=ERRORS, summary="A task's status and result")
async def get_task(task_id: str, database: DatabaseDep) -> Response:
    return _json(await database.run(lambda session: shown([_get_or_404(session, task_id)], _one)))


@router.post("/{task_id}/retry", status_code=status.HTTP_202_ACCEPTED, response_model=TaskSubmitted,
             responses=ERRORS, summary="Run a failed or dead-lettered task again")
async def retry_task(task_id: str, database: DatabaseDep, gateway: GatewayDep, metrics: MetricsDep) -> Response:
    original = await database.run(_get_or_404, task_id)
    if original.status not in (FAILURE, REVOKED):
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"task {task_id} is {original.status}; only FAILURE or REVOKED tasks can be retried")
    body = TaskCreate(task=original.task_name, args=original.args or [], kwargs=original.kwargs or {},
                      queue=original.queue, priority=original.priority)
    record, _ = await database.call(functools.partial(submission.submit, gateway, body, retry_of=original.task_id))
    metrics.submitted.labels(record.task_name, record.queue).inc()
    return Response(submitted(record).model_dump_json(), status.HTTP_202_ACCEPTED,
                    {"Location": f"/v1/tasks/{record.task_id}"}, media_type="application/json")


@router.post("/{task_id}/cancel", response_model=TaskPublic, responses=ERRORS, summary="Revoke a task")
async def cancel_task(
    task_id: str,
    database: DatabaseDep,
    gateway: GatewayDep,
    terminate: Annotated[bool, Query(description="Also stop it if it is already running (SIGTERM); only on queues "
                                                 "whose pool can (see can_terminate in GET /v1/task-types).")] = False,
) -> Response:
    record = await database.run(_get_or_404, task_id)
    if record.status in FINAL_STATES:
        raise HTTPException(status.HTTP_409_CONFLICT, f"task {task_id} already finished as {record.status}")
    # Never answer REVOKED for a task that will run to its end.
    if terminate and not gateway.can_terminate(record.queue):
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"queue {record.queue!r} runs tasks in a pool that cannot stop a running task; "
                            "cancel without terminate to revoke it before it starts")
    if record.status == STARTED and not terminate:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"task {task_id} is running; a revoke does not stop it"
                            + (": pass terminate=true" if gateway.can_terminate(record.queue) else
                               f", and queue {record.queue!r}'s pool cannot stop it"))
    try:
        # Not inside a database call: a broker that does not answer holds no connection.
        await run_in_threadpool(functools.partial(gateway.celery.control.revoke, task_id, terminate=terminate))
    except Exception as exc:  # noqa: BLE001
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the broker is unavailable: {exc}") from exc

    def revoke(session) -> str:
        store.mark_revoked(session, task_id=task_id)
        session.commit()
        return shown([_get_or_404(session, task_id)], _one)

    return _json(await database.run(revoke))
