"""``store.insert_pending`` stores exactly what SQLAlchemy's own insert stores, on both databases.

On SQLite it binds the values itself (each column's processor once per distinct value); the
stored text is compared raw, because a datetime bound without SQLAlchemy's processor would be
written in another format and sort wrongly against the others.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from stalk_workers.records import db, store
from tests.fixtures.servers import fresh_postgres_db


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request, tmp_path, postgres_server):
    url = f"sqlite:///{tmp_path / 'records.db'}" if request.param == "sqlite" else fresh_postgres_db(postgres_server)
    db.upgrade(url)
    engine = db.create_engine(url)
    yield db.session_factory(engine)
    engine.dispose()


def _rows(prefix: str) -> list[dict]:
    now = datetime(2026, 11, 23, 22, 0, 0, 123456, tzinfo=UTC)
    return [
        store.pending_row(task_id=f"{prefix}-plain", task_name="stalk.echo", queue="default", args=[1, "two"],
                          kwargs={}, now=now),
        store.pending_row(task_id=f"{prefix}-full", task_name="reports.résumé", queue="reports",
                          args=[{"nested": [1.5, None, True]}], kwargs={"k": "é'\""}, priority=3,
                          eta=now + timedelta(seconds=30), idempotency_key=f"{prefix}-key", retry_of="earlier",
                          now=now),
        store.pending_row(task_id=f"{prefix}-same-time", task_name="stalk.echo", queue="default", args=[],
                          kwargs={"a": 1}, now=now),
    ]


def _stored(sessions, prefix: str) -> list[tuple]:
    with sessions() as session:
        raw = session.execute(sa.text("SELECT * FROM task_records WHERE task_id LIKE :p ORDER BY task_id"),
                              {"p": f"{prefix}-%"}).all()
    # Everything but the ids (and the idempotency key made from them) must be byte for byte equal.
    return [tuple(str(v).replace(prefix, "P") if isinstance(v, str) else v for v in row) for row in raw]


def test_insert_pending_stores_what_sqlalchemy_stores(sessions):
    with sessions() as session:
        store.insert_pending(session, _rows("fast"))
        session.execute(sa.insert(store.TABLE), _rows("core"))
        session.commit()
    fast, core = _stored(sessions, "fast"), _stored(sessions, "core")
    assert len(fast) == 3 and fast == core
    with sessions() as session:  # and it reads back as the values written
        record = store.get(session, "fast-full")
        assert store.as_utc(record.eta) == datetime(2026, 11, 23, 22, 0, 30, 123456, tzinfo=UTC)
        assert record.args == [{"nested": [1.5, None, True]}] and record.kwargs == {"k": "é'\""}
        assert (record.status, record.retries, record.dead_lettered, record.source) == ("PENDING", 0, False, "api")


def _statements(engine) -> list[str]:
    """Each INSERT on ``engine``: "sqlalchemy" when SQLAlchemy compiled it, "stalk" when store
    bound it itself (a driver-level statement has no compiled form)."""
    seen = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT"):
            seen.append("stalk" if context.compiled is None else "sqlalchemy")

    sa.event.listen(engine, "before_cursor_execute", before)
    return seen


@pytest.mark.parametrize("shortcut", [True, False], ids=["sqlite-executemany on", "sqlite-executemany off"])
def test_with_the_shortcut_off_sqlalchemy_binds_and_stores_the_same(tmp_path, shortcut):
    url = f"sqlite:///{tmp_path / 'records.db'}"
    db.upgrade(url)
    fast, core = db.create_engine(url), db.create_engine(url, sqlite_executemany=shortcut)
    statements = _statements(core)
    with db.session_factory(fast)() as session:
        store.insert_pending(session, _rows("fast"))
        session.commit()
    with db.session_factory(core)() as session:
        store.insert_pending(session, _rows("core"))
        session.commit()
    seen = store.SeenTask(task_id="core-plain", task_name="stalk.echo", queue="default", args=[1, "two"], kwargs={})
    store.write(core, [store.started(seen), store.succeeded(seen, result={"ok": True})])
    assert statements == ["stalk" if shortcut else "sqlalchemy"] * 2  # the insert, then the upsert

    sessions = db.session_factory(fast)
    # Stored alike, apart from the row the upsert finished.
    assert [row for row in _stored(sessions, "core") if "P-plain" not in row] == \
           [row for row in _stored(sessions, "fast") if "P-plain" not in row]
    with sessions() as session:
        record = store.get(session, "core-plain")
        assert (record.status, record.result, record.retries) == ("SUCCESS", {"ok": True}, 0)
        assert store.as_utc(record.started_at) <= store.as_utc(record.finished_at)
    fast.dispose(), core.dispose()
