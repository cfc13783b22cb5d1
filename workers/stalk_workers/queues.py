"""The queue table: every queue's name, which tasks it receives, and how its workers run.

One table serves everyone: the Celery app builds its queues and routes from it, the API lists
it, ``stalk dev`` starts a worker per queue from it, and the Helm chart's ``queues:`` map has
the same shape (``STALK_QUEUES_FILE`` points at a YAML file of that shape to replace it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_QUEUE = "default"
QUEUE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$"
# Keys of the chart's per-queue values that only the chart uses (pod shape, not queue behaviour).
CHART_ONLY_KEYS = frozenset({"resources", "nodeSelector", "tolerations", "affinity", "env", "podAnnotations"})


class QueueSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The chart's values.schema.json says what these fields say (hack/chart_schema.py writes it
    # from here): bounds and descriptions belong here, not in the schema.
    name: str = Field(pattern=QUEUE_NAME_PATTERN)
    routes: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        (), description="Task-name globs routed to this queue (Celery task_routes patterns); "
                        "tasks no queue routes go to default.")
    concurrency: int = Field(2, ge=1, le=256, description="Tasks one worker runs at once.")
    pool: Literal["prefork", "threads", "solo"] = Field(
        "prefork", description="Celery worker pool; only prefork can terminate a running task.")
    min_replicas: int = Field(0, ge=0, description="Fewest workers; 0 lets an idle queue scale to zero.")
    # The TaskQueue CRD's maximum.
    max_replicas: int = Field(10, ge=1, le=10000, description="Most workers.")
    tasks_per_replica: int = Field(10, ge=1, description="Waiting plus in-flight tasks one worker should carry.")
    max_wait_seconds: int | None = Field(
        None, ge=1, description="Scale up while the oldest waiting task has waited longer than this; "
                                "unset: by waiting and in-flight tasks only.")

    @field_validator("max_replicas")
    @classmethod
    def _max_at_least_min(cls, value: int, info) -> int:
        minimum = info.data.get("min_replicas", 0)
        if value < minimum:
            raise ValueError(f"max_replicas ({value}) must be >= min_replicas ({minimum})")
        return value


BUILTIN_QUEUES: tuple[QueueSpec, ...] = (
    QueueSpec(name=DEFAULT_QUEUE, routes=("stalk.*",), concurrency=4, min_replicas=1),
    QueueSpec(name="classification", routes=("*.classify*",), concurrency=2, tasks_per_replica=20),
    QueueSpec(
        name="summarization",
        routes=("*.summarize*", "*.rewrite*"),
        concurrency=2,
        tasks_per_replica=4,
        max_wait_seconds=30,
    ),
    QueueSpec(name="notifications", routes=("*.notify*", "*.send_*"), concurrency=8, pool="threads"),
)


class QueueTableError(ValueError):
    """The queue table file is missing, not YAML, or does not describe valid queues."""


def load_queue_table(path: Path | None = None) -> tuple[QueueSpec, ...]:
    """Return the queues from ``path`` or the built-in table. The file is a ``{name: {...}}`` map, a
    list of queues (``- name: default``), or a Helm values file whose ``queues:`` is either."""
    if path is None:
        return BUILTIN_QUEUES
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise QueueTableError(f"cannot read queue table {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise QueueTableError(f"queue table {path} is not valid YAML{where}: {problem}") from exc
    specs = [_queue(name, fields, path) for name, fields in _entries(_unwrap(raw), path)]
    names = [s.name for s in specs]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise QueueTableError(f"queue table {path} names {', '.join(map(repr, twice))} more than once")
    if DEFAULT_QUEUE not in names:
        raise QueueTableError(f"queue table {path} must define the {DEFAULT_QUEUE!r} queue; it has: "
                              f"{', '.join(names)}")
    return tuple(specs)


SHAPES = ("a map of queue name to settings (default: {routes: ['stalk.*']}), a list of queues "
          "(- name: default), or a Helm values file with queues:")


def _unwrap(raw):
    # A Helm values file: its queues: key holds the table (a queue named "queues" has settings instead).
    if isinstance(raw, dict) and isinstance(raw.get("queues"), dict | list) and not (
            isinstance(raw["queues"], dict) and set(raw["queues"]) & set(QueueSpec.model_fields)):
        return raw["queues"]
    return raw


def _entries(raw, path) -> list[tuple[object, object]]:
    """(name, settings) pairs from either shape, or the one line that says what the file is instead."""
    if isinstance(raw, dict) and raw:
        return list(raw.items())
    if isinstance(raw, list) and raw:
        entries = []
        for number, item in enumerate(raw, 1):
            if not isinstance(item, dict) or "name" not in item:
                raise QueueTableError(f"queue table {path}: item {number} of the list must be a map with a name: "
                                      f"(- name: default), not {item!r}")
            entries.append((item["name"], {k: v for k, v in item.items() if k != "name"}))
        return entries
    shown = "empty" if not raw else f"a {type(raw).__name__} ({raw!r:.60})"
    raise QueueTableError(f"queue table {path} is {shown}; it must be {SHAPES}")


def _queue(name, fields, path) -> QueueSpec:
    if fields is not None and not isinstance(fields, dict):
        raise QueueTableError(f"queue {name!r} in {path}: its settings must be a map (routes:, concurrency:, ...), "
                              f"not {fields!r:.60}")
    try:
        return QueueSpec(name=name, **_to_snake_case(fields or {}))
    except (ValidationError, TypeError) as exc:
        raise QueueTableError(f"queue {name!r} in {path}: {_first_error(exc)}") from exc


def _to_snake_case(fields: dict) -> dict:
    # The chart's values use camelCase (minReplicas); Python uses snake_case. Accept both.
    out = {}
    for key, value in fields.items():
        if key in CHART_ONLY_KEYS:
            continue
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
        out[snake] = tuple(value) if snake == "routes" else value
    return out


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            return f"unknown setting {where!r}; a queue's settings are: {', '.join(QueueSpec.model_fields)}"
        return f"{where}: {err['msg']}" if where else err["msg"]
    return str(exc)


def celery_routes(queues: tuple[QueueSpec, ...]) -> dict[str, dict[str, str]]:
    """Celery ``task_routes``: glob pattern -> queue, in table order (first match wins)."""
    return {pattern: {"queue": q.name} for q in queues for pattern in q.routes}
