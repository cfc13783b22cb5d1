"""The task record table. Alembic migrations in ``migrations/`` create and change it."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


# Celery's own state names, so records and AsyncResult agree.
PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED = "PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"
STATES = (PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED)
FINAL_STATES = frozenset({SUCCESS, FAILURE, REVOKED})


class TaskRecord(Base):
    __tablename__ = "task_records"

    task_id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    task_name: Mapped[str] = mapped_column(sa.String(255), index=True)
    queue: Mapped[str] = mapped_column(sa.String(255))
    status: Mapped[str] = mapped_column(sa.String(16))
    args: Mapped[list] = mapped_column(sa.JSON, default=list)
    kwargs: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    priority: Mapped[int | None] = mapped_column(sa.Integer)
    eta: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    result: Mapped[object | None] = mapped_column(sa.JSON)
    error_type: Mapped[str | None] = mapped_column(sa.String(255))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    traceback: Mapped[str | None] = mapped_column(sa.Text)
    retries: Mapped[int] = mapped_column(sa.Integer, default=0)
    dead_lettered: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(sa.String(255))
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    # A re-run made through the API points at the task it re-runs.
    retry_of: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    # Where the record came from: "api" (submitted through it) or "worker" (first seen by a worker).
    source: Mapped[str] = mapped_column(sa.String(16), default="api")
    # False from the API's commit of a submission until its message is in Redis: a record left
    # unpublished by a fault or a crash is settled by ``store.sweep_unpublished``.
    published: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.true())
    # Times the task's message was found lost in Redis and published again (stalk_api/recovery),
    # and when last.
    recovered: Mapped[int] = mapped_column(sa.Integer, server_default="0")  # no Python default: the
    # workers' SQLite executemany (store._execute_many) binds only the columns a row names
    recovered_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))

    __table_args__ = (
        sa.Index("ix_task_records_created", "created_at", "task_id"),
        sa.Index("ix_task_records_status_created", "status", "created_at"),
        sa.Index("ix_task_records_queue_created", "queue", "created_at"),
        sa.Index("ix_task_records_unpublished", "created_at", sqlite_where=sa.text("NOT published"),
                 postgresql_where=sa.text("NOT published")),
    )
