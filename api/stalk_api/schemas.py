"""Request and response bodies. Requests and responses are separate models, as in the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Deeper arguments are refused: pydantic stops serializing at 255 levels, so a record nested deeper
# was stored and then answered 500 on every read (issue 12); 64 leaves room for results around them.
MAX_NESTING = 64


def json_problem(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` cannot be stored and read back as the JSON workers receive; None if it can."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate ("\ud800"): valid in a JSON escape, not in UTF-8 text.
            return "text must be valid Unicode: lone surrogates such as \\ud800 cannot be stored"
        return None
    if isinstance(value, (list, dict)):
        if depth >= MAX_NESTING:
            return f"values may be nested at most {MAX_NESTING} levels deep"
        items = value.items() if isinstance(value, dict) else ((None, item) for item in value)
        for key, item in items:
            problem = json_problem(key, depth) if key is not None else None
            problem = problem or json_problem(item, depth + 1)
            if problem:
                return problem
    return None


TaskStatus = Literal["PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"]


class TaskCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"task": "stalk.echo", "args": ["hello"], "kwargs": {"n": 1}}]},
    )

    task: str = Field(min_length=1, max_length=255, description="A registered task name (see GET /v1/task-types).")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(None, description="Override the queue the task is routed to.")
    countdown: float | None = Field(None, ge=0, allow_inf_nan=False, description="Run no sooner than this many seconds from now.")
    eta: datetime | None = Field(None, description="Run no sooner than this time (ISO 8601, with a zone).")
    priority: int | None = Field(None, ge=0, le=9, description="0 is the highest priority on Redis.")

    @field_validator("args", "kwargs")
    @classmethod
    def _storable(cls, value):
        problem = json_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> TaskCreate:
        if self.countdown is not None and self.eta is not None:
            raise ValueError("give either countdown or eta, not both")
        if self.eta is not None and self.eta.tzinfo is None:
            raise ValueError("eta needs a time zone, e.g. 2026-01-01T12:00:00Z")
        return self


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskCreate] = Field(min_length=1)


class TaskSubmitted(BaseModel):
    task_id: str
    status: TaskStatus
    task: str
    queue: str
    created_at: datetime
    retry_of: str | None = None


class BatchSubmitted(BaseModel):
    tasks: list[TaskSubmitted]


class TaskError(BaseModel):
    type: str | None
    message: str | None
    traceback: str | None = Field(None, description="The end of the traceback, where the error is.")


class TaskPublic(BaseModel):
    task_id: str
    task: str
    status: TaskStatus
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int | None
    eta: datetime | None
    result: Any = None
    error: TaskError | None = None
    retries: int
    dead_lettered: bool
    worker: str | None
    retry_of: str | None
    source: Literal["api", "worker"]
    created_at: datetime = Field(description="When the API accepted the task; for a task sent by another Celery "
                                             "client, when a worker first started it.")
    started_at: datetime | None = Field(description="When the task's first attempt started; retries and "
                                                    "redeliveries do not move it (`retries` counts them).")
    finished_at: datetime | None
    recovered: int = Field(0, description="Times the task's message was found lost in Redis (a restart without "
                                          "persistence, a failover, a FLUSHDB) and published again; docs/recovery.md.")
    recovered_at: datetime | None = Field(None, description="When it was last published again by a recovery.")
    runtime_seconds: float | None = Field(description="From `started_at` to `finished_at`: the whole run, retries "
                                                      "and their backoff included.")
    unreadable: list[str] = Field(
        default_factory=list,
        description="Fields stored in a form JSON cannot show (too deeply nested, broken text), shown empty.")


class TasksPublic(BaseModel):
    tasks: list[TaskPublic]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= to get the next page; null on the last page.")


class QueuePublic(BaseModel):
    name: str
    waiting: int = Field(description="Messages in the queue's Redis lists, all priority levels counted. An "
                                     "eta/countdown task counts here until a worker takes it (a worker must, "
                                     "to hold it until its time), then under scheduled.")
    in_flight: int = Field(description="Delivered to a worker and not yet acknowledged.")
    scheduled: int = Field(description="Held by workers until their eta/countdown.")
    oldest_wait_seconds: float | None = Field(description="Seconds the oldest waiting message has waited: from its "
                                              "send time (tasks sent through this API, or by an app that "
                                              "installs stalk_workers.sent_at), else from when this API's "
                                              "reads saw it arrive; null when nothing waits.")
    workers: int = Field(description="Workers online that consume this queue.")


class UnconsumedListPublic(BaseModel):
    list: str = Field(description="The exact Redis list name (key prefix and priority suffix included).")
    queue: str = Field(description="The Celery queue it belongs to: a worker started with -Q <queue> consumes it.")
    messages: int = Field(description="Messages in the list.")


class QueuesPublic(BaseModel):
    queues: list[QueuePublic]
    unconsumed: list[UnconsumedListPublic] = Field(
        description="A warning: lists on the broker that hold Celery messages but that no queue of this "
                    "API names and no online worker consumes, so nothing will run them (a send_task "
                    "without a queue lands in Celery's default list 'celery'). Looked for now and then "
                    "(STALK_UNCONSUMED_SCAN_SECONDS), not on every request.")


class WorkerPublic(BaseModel):
    name: str
    queues: list[str]
    active_tasks: int
    pool: str | None
    concurrency: int | None


class WorkersPublic(BaseModel):
    workers: list[WorkerPublic]


class TaskTypePublic(BaseModel):
    name: str
    queue: str
    can_terminate: bool = Field(description="Whether cancel?terminate=true can stop it while it runs (prefork pool).")
    max_retries: int | None
    retries_automatically: bool
    description: str | None


class TaskTypesPublic(BaseModel):
    task_types: list[TaskTypePublic]


class Problem(BaseModel):
    detail: str
