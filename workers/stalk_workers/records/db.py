"""Engines and migrations. SQLite (the embedded default) and PostgreSQL are both first class."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


# An engine's execution option, read by ``store._execute_many``: False takes SQLAlchemy's own
# executemany on SQLite too (``sqlite-executemany`` in STALK_LIBRARY_SHORTCUTS_OFF).
SQLITE_EXECUTEMANY = "stalk_sqlite_executemany"


def create_engine(url: str, *, sqlite_executemany: bool = True, **kwargs) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                                  execution_options={SQLITE_EXECUTEMANY: sqlite_executemany}, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "handle_error", _sqlite_file_errors)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, **kwargs)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the API read while workers write; NORMAL sync is durable across process crashes.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# SQLite errors after which a connection may keep failing although the file is fine again
# (measured: a quarter of submits failed with "disk I/O error" for 40 s after a read-only spell).
_FILE_ERRORS = ("disk i/o error", "readonly database", "database or disk is full", "unable to open database file")


def _sqlite_file_errors(context) -> None:
    # Treated as a disconnect: SQLAlchemy drops this connection and every pooled one older than it.
    if any(text in str(context.original_exception).lower() for text in _FILE_ERRORS):
        context.is_disconnect = True


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (``stalk db upgrade``)."""
    command.upgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
