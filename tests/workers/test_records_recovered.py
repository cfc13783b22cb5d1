"""Migration 0003 and the recovery mark: a record counts each time its lost message was published
again, on SQLite and PostgreSQL, and the API's task view shows it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from stalk_api.routes.tasks import public
from stalk_workers.records import db, store
from tests.fixtures.servers import fresh_postgres_db

SEEN = store.SeenTask(task_id="t-1", task_name="stalk.noop", queue="default", args=[], kwargs={})


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path, postgres_server):
    return f"sqlite:///{tmp_path / 'records.db'}" if request.param == "sqlite" else fresh_postgres_db(postgres_server)


def add_pending(engine, task_id="t-1"):
    with db.session_factory(engine)() as session:
        store.add_pending(session, task_id=task_id, task_name="stalk.noop", queue="default", args=[], kwargs={})
        session.commit()


def test_records_written_before_0003_read_as_never_recovered(url):
    db.upgrade(url, "0002")
    engine = db.create_engine(url)
    with engine.begin() as conn:  # the columns 0002 has; the model already has 0003's
        conn.execute(sa.text(
            "INSERT INTO task_records (task_id, task_name, queue, status, args, kwargs, retries, dead_lettered,"
            " source, created_at, updated_at) VALUES ('t-1', 'stalk.noop', 'default', 'PENDING', '[]', '{}', 0,"
            " false, 'api', :now, :now)"), {"now": datetime.now(UTC)})
    db.upgrade(url)
    from alembic.script import ScriptDirectory

    assert db.current_revision(engine) == ScriptDirectory.from_config(db.alembic_config(url)).get_current_head()
    with db.session_factory(engine)() as session:
        record = store.get(session, "t-1")
    assert (record.recovered, record.recovered_at) == (0, None)
    from alembic import command

    command.downgrade(db.alembic_config(url), "0002")
    assert "recovered" not in {c["name"] for c in sa.inspect(engine).get_columns("task_records")}
    engine.dispose()


def test_each_recovery_is_counted_and_shown_until_the_task_ends(url):
    db.upgrade(url)
    engine = db.create_engine(url)
    add_pending(engine)
    when = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    sessions = db.session_factory(engine)
    for _ in range(2):
        with sessions() as session:
            assert store.mark_recovered(session, task_id="t-1", now=when)
            session.commit()
    with sessions() as session:
        shown = public(store.get(session, "t-1"))
    assert (shown.recovered, shown.recovered_at) == (2, when)
    store.write(engine, [store.succeeded(SEEN, result=None)])
    with sessions() as session:
        # A task that finished during the check is not marked.
        assert not store.mark_recovered(session, task_id="t-1")
        session.commit()
        assert store.get(session, "t-1").recovered == 2
    engine.dispose()
