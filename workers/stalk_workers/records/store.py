"""Reading and writing task records. Every function takes keyword arguments after the session.

Writes from workers are upserts: a task sent by a plain Celery client (not through the API) has
no record yet, and is recorded on first sight.
"""

from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from stalk_workers.records.db import SQLITE_EXECUTEMANY
from stalk_workers.records.models import (
    FAILURE,
    FINAL_STATES,
    PENDING,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
    TaskRecord,
)

TABLE = TaskRecord.__table__
MAX_TRACEBACK_CHARS = 4000


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without a zone; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def in_utc(value: datetime) -> datetime:
    """An aware time moved to UTC; a naive one taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # within a day of year 1 or 9999: before or after every record
        return (datetime.min if value.year == 1 else datetime.max).replace(tzinfo=UTC)


# --- the API's side ---------------------------------------------------------------------------

def pending_row(
    *,
    task_id: str,
    task_name: str,
    queue: str,
    args: list,
    kwargs: dict,
    priority: int | None = None,
    eta: datetime | None = None,
    idempotency_key: str | None = None,
    retry_of: str | None = None,
    now: datetime | None = None,
) -> dict:
    """The columns of a task the API has accepted and not yet seen run."""
    now = now or utcnow()
    return {
        "task_id": task_id, "task_name": task_name, "queue": queue, "status": PENDING, "args": args,
        "kwargs": kwargs, "priority": priority, "eta": eta, "idempotency_key": idempotency_key,
        "retry_of": retry_of, "retries": 0, "dead_lettered": False, "source": "api", "published": False,
        "created_at": now, "updated_at": now,
    }


def add_pending(session: Session, **columns) -> TaskRecord:
    """Stage one PENDING record (ORM, flushed); the caller commits once the task is published."""
    record = TaskRecord(**pending_row(**columns))
    session.add(record)
    session.flush()
    return record


def insert_pending(session: Session, rows: list[dict]) -> None:
    """Stage many PENDING rows (``pending_row``'s) in one executemany; the caller commits once they
    are published."""
    if rows:
        _execute_many(session.connection(), _INSERT, rows)


_INSERT = sa.insert(TABLE)


def _execute_many(conn: sa.Connection, statement, rows: list[dict]) -> None:
    """``conn.execute(statement, rows)`` for rows with the same keys; on SQLite, faster.

    SQLite: the statement SQLAlchemy compiles and the values its dialect types bind, with each
    column's bind processor run once per distinct value instead of once per row. The rows of a
    batch share their times, status and names, and SQLAlchemy's per-row work (a dict of ~15
    parameters, each datetime formatted again) was a quarter of a batched submission's CPU in the
    API and most of a worker's record writes. It reads SQLAlchemy's compiled ``positiontup``, so an
    engine made with ``sqlite_executemany=False`` (db.create_engine) takes SQLAlchemy's own path.
    Other databases: SQLAlchemy's own executemany (psycopg's is batched already).
    """
    if conn.dialect.name != "sqlite" or not conn.get_execution_options().get(SQLITE_EXECUTEMANY, True):
        conn.execute(statement, rows)
        return
    sql, columns, processors = _sqlite_compiled(conn.dialect, statement, tuple(rows[0]))
    conn.exec_driver_sql(sql, _bound(rows, columns, processors))


@functools.cache
def _sqlite_compiled(dialect, statement, keys: tuple[str, ...]) -> tuple[str, tuple[str, ...], tuple]:
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    order = tuple(compiled.positiontup)  # qmark style: the parameters' order in the SQL
    types = (TABLE.c[name].type.dialect_impl(dialect) for name in order)  # the dialect's own types
    return compiled.string, order, tuple(t.bind_processor(dialect) for t in types)


def _bound(rows: list[dict], columns: tuple[str, ...], processors: tuple) -> list[tuple]:
    seen: list[dict] = [{} for _ in columns]
    out = []
    for row in rows:
        values = []
        for name, process, cache in zip(columns, processors, seen):
            value = row[name]
            if process is not None:
                key = (type(value), value) if value.__hash__ is not None else None
                if key is None:  # a list or dict (JSON arguments, results): processed every time
                    value = process(value)
                else:
                    done = cache.get(key)
                    if done is None:
                        done = cache[key] = process(value)
                    value = done
            values.append(value)
        out.append(tuple(values))
    return out


def mark_published(session: Session, *, task_ids: list[str]) -> None:
    """The tasks' messages are in Redis: their records are no longer leftovers to sweep."""
    session.execute(sa.update(TABLE).where(TABLE.c.task_id.in_(task_ids)).values(published=True))


def discard_unpublished(session: Session, *, task_ids: list[str]) -> None:
    """Remove the records of tasks whose messages never reached Redis."""
    session.execute(sa.delete(TABLE).where(TABLE.c.task_id.in_(task_ids), ~TABLE.c.published))


def sweep_unpublished(session: Session, *, older_than: datetime) -> int:
    """Settle records an API process left unpublished (it crashed, or the database failed while it
    settled them) once no submission can still be under way: a task a worker has seen was sent;
    a record still PENDING is removed. If its message did get out after all, the worker that runs
    it records it again on first sight, which beats publishing a second copy that would run twice.
    Returns how many records were removed."""
    unsettled = (~TABLE.c.published, TABLE.c.created_at < older_than)
    session.execute(sa.update(TABLE).where(*unsettled, TABLE.c.status != PENDING).values(published=True))
    return session.execute(sa.delete(TABLE).where(*unsettled, TABLE.c.status == PENDING)).rowcount


def mark_recovered(session: Session, *, task_id: str, now: datetime | None = None) -> bool:
    """Count one recovery of a task whose message was published again, if its record is still
    unfinished (a task that finished meanwhile is left as it is). Returns whether it was counted."""
    now = now or utcnow()
    done = session.execute(
        sa.update(TABLE).where(TABLE.c.task_id == task_id, TABLE.c.status.in_((PENDING, STARTED, RETRY)))
        .values(recovered=TABLE.c.recovered + 1, recovered_at=now, updated_at=now))
    return done.rowcount == 1


def get(session: Session, task_id: str) -> TaskRecord | None:
    return session.get(TaskRecord, task_id)


def get_by_idempotency_key(session: Session, key: str) -> TaskRecord | None:
    return session.scalars(sa.select(TaskRecord).where(TaskRecord.idempotency_key == key)).first()


@dataclass(frozen=True)
class TaskFilter:
    status: str | None = None
    queue: str | None = None
    task_name: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    dead_lettered: bool | None = None
    # The start of a task id, as a shortened id is typed (``stalk status 01a2330b``).
    id_prefix: str | None = None


class BadCursor(ValueError):
    """The pagination cursor was not one this API handed out."""


def encode_cursor(record: TaskRecord) -> str:
    raw = f"{as_utc(record.created_at).isoformat()}|{record.task_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), task_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadCursor("cursor is not valid: use the next_cursor value from a previous page") from exc


def list_page(
    session: Session, *, where: TaskFilter, limit: int, cursor: str | None = None
) -> tuple[list[TaskRecord], str | None]:
    """Newest first. Keyset pagination on (created_at, task_id): pages stay stable under inserts."""
    query = sa.select(TaskRecord)
    for column, value in (
        (TaskRecord.status, where.status), (TaskRecord.queue, where.queue),
        (TaskRecord.task_name, where.task_name), (TaskRecord.dead_lettered, where.dead_lettered),
    ):
        if value is not None:
            query = query.where(column == value)
    if where.id_prefix:
        # LIKE, not a range on the key: a range follows the column's collation, which in PostgreSQL
        # ignores the dashes of a UUID. autoescape: a foreign id may hold % or _. Any case, on both
        # databases: ids are lowercase UUIDs, and a user may paste one in upper case. lower() LIKE
        # rather than ILIKE, which PostgreSQL's prefix index (migration 0004) cannot serve.
        query = query.where(sa.func.lower(TaskRecord.task_id).startswith(where.id_prefix.lower(), autoescape=True))
    # In UTC, as written: SQLite compares the stored text, which has no zone, so 10:00+05:00 would
    # otherwise be taken for 10:00 UTC.
    if where.created_after is not None:
        query = query.where(TaskRecord.created_at >= in_utc(where.created_after))
    if where.created_before is not None:
        query = query.where(TaskRecord.created_at < in_utc(where.created_before))
    if cursor is not None:
        created, task_id = decode_cursor(cursor)
        query = query.where(sa.tuple_(TaskRecord.created_at, TaskRecord.task_id) < (created, task_id))
    query = query.order_by(TaskRecord.created_at.desc(), TaskRecord.task_id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def mark_revoked(session: Session, *, task_id: str) -> None:
    session.execute(
        sa.update(TABLE)
        .where(TABLE.c.task_id == task_id, TABLE.c.status.in_((PENDING, STARTED, RETRY)))
        .values(status=REVOKED, finished_at=utcnow(), updated_at=utcnow())
    )


# --- the workers' side: changes, written in batches, no ORM session ---------------------------

@dataclass(frozen=True)
class SeenTask:
    """What a worker knows about a task when it first touches it."""

    task_id: str
    task_name: str
    queue: str
    args: list
    kwargs: dict
    retries: int = 0
    worker: str | None = None
    priority: int | None = None


@dataclass(frozen=True)
class Change:
    """One state change of one task, as a worker saw it; ``write`` applies many at once."""

    seen: SeenTask
    values: dict


def started(seen: SeenTask) -> Change:
    return Change(seen, {"status": STARTED, "started_at": utcnow(), "retries": seen.retries,
                         "worker": seen.worker, "dead_lettered": False})


def retried(seen: SeenTask, *, error: BaseException, traceback: str | None) -> Change:
    return Change(seen, {"status": RETRY, "retries": seen.retries + 1, **_error_fields(error, traceback)})


def succeeded(seen: SeenTask, *, result: object) -> Change:
    return Change(seen, {"status": SUCCESS, "result": result, "finished_at": utcnow(), "dead_lettered": False,
                         "error_type": None, "error_message": None, "traceback": None})


def failed(seen: SeenTask, *, error: BaseException, traceback: str | None, dead_lettered: bool,
           keep_retries: bool = False) -> Change:
    """``keep_retries``: the writer does not know the count (a failure seen outside the task's
    process); the record keeps its own."""
    retries = {} if keep_retries else {"retries": seen.retries}
    return Change(seen, {"status": FAILURE, "finished_at": utcnow(), "dead_lettered": dead_lettered,
                         **retries, **_error_fields(error, traceback)})


def write(engine: Engine, changes: list[Change]) -> None:
    """Apply ``changes`` in one transaction, in order; one upsert per task (later values win).

    Rows that set the same columns share one executemany statement: a flush of many finished
    tasks is one statement, not one per task (about 3x less CPU per task, measured).
    """
    merged: dict[str, Change] = {}
    for change in changes:
        earlier = merged.get(change.seen.task_id)
        values = {**earlier.values, **change.values} if earlier else change.values
        merged[change.seen.task_id] = Change(change.seen, values)
    now = utcnow()
    groups: dict[tuple[tuple[str, ...], bool], list[dict]] = {}
    for change in merged.values():
        values = {**change.values, "updated_at": now}
        final = values.get("status") in FINAL_STATES
        groups.setdefault((tuple(sorted(values)), final), []).append(_insert_values(change.seen, values, now))
    with engine.begin() as conn:
        for (columns, final), rows in groups.items():
            _execute_many(conn, _upsert(conn.dialect.name, columns, final), rows)


@functools.cache
def _upsert(dialect_name: str, columns: tuple[str, ...], final: bool = True):
    """The upsert that sets ``columns`` on conflict, built once: building ``excluded`` again for
    every flush cost about a quarter of a flush's CPU (py-spy).

    A change to a state that is not final (STARTED, RETRY) never replaces a final one: two processes
    write one task's record (a pool process buffers STARTED while the worker's main process writes the
    FAILURE of a rejected message or a hard time limit at once), and the later write may carry the
    earlier state."""
    dialect = sqlite if dialect_name == "sqlite" else postgresql
    statement = dialect.insert(TABLE)
    set_ = {c: statement.excluded[c] for c in columns}
    if "started_at" in set_:
        # started_at is the first attempt's start: a retry or a redelivery starts again, and
        # ``retries`` counts them (the API documents the field so).
        set_["started_at"] = sa.func.coalesce(TABLE.c.started_at, statement.excluded.started_at)
    return statement.on_conflict_do_update(index_elements=[TABLE.c.task_id], set_=set_,
                                           where=None if final else _NOT_FINAL)


# Literal, not bound: the SQLite fast path binds only the rows' own columns (``_execute_many``).
_NOT_FINAL = TABLE.c.status.notin_([sa.literal_column(f"'{state}'") for state in sorted(FINAL_STATES)])


def _insert_values(seen: SeenTask, values: dict, now: datetime) -> dict:
    """The whole row for a task first seen by a worker; ``values`` win over the defaults."""
    return {
        "task_id": seen.task_id, "task_name": seen.task_name, "queue": seen.queue, "args": seen.args,
        "kwargs": seen.kwargs, "priority": seen.priority, "retries": seen.retries, "worker": seen.worker,
        # Created when it started, if this write says so: the record is written up to a flush
        # later, and a record created after its own start reads as nonsense.
        "dead_lettered": False, "source": "worker", "created_at": values.get("started_at") or now, **values,
    }


def record_revoked(engine: Engine, *, task_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(TABLE).where(TABLE.c.task_id == task_id)
            .values(status=REVOKED, finished_at=utcnow(), updated_at=utcnow())
        )


def _error_fields(error: BaseException, traceback: str | None) -> dict:
    return {
        "error_type": type(error).__name__,
        "error_message": _text(str(error)[:MAX_TRACEBACK_CHARS]),
        "traceback": _text(_summarize_traceback(traceback)),
    }


def _text(value: str | None) -> str | None:
    # A lone surrogate in an exception's text cannot be stored as UTF-8: the write failed whole.
    return value.encode("utf-8", "backslashreplace").decode() if value else value


def _summarize_traceback(traceback: str | None) -> str | None:
    # Keep the end: the frames nearest the error and the message say the most.
    if not traceback:
        return None
    return traceback if len(traceback) <= MAX_TRACEBACK_CHARS else "…" + traceback[-MAX_TRACEBACK_CHARS:]
