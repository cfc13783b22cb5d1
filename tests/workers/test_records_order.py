"""Two processes write one task's record (a pool process buffers STARTED; the worker's main process
writes a rejected message's or a hard time limit's FAILURE at once): whatever order the writes land
in, a final state stays final and keeps its error."""

from __future__ import annotations

import pytest

from stalk_workers.records import db, store
from tests.fixtures.servers import fresh_postgres_db

SEEN = store.SeenTask(task_id="t-1", task_name="stalk.fail", queue="default", args=[], kwargs={"bogus": 1},
                      retries=2, worker="default-0@test")


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path, postgres_server):
    url = f"sqlite:///{tmp_path / 'records.db'}" if request.param == "sqlite" else fresh_postgres_db(postgres_server)
    db.upgrade(url)
    engine = db.create_engine(url)
    yield engine
    engine.dispose()


def read(engine):
    with db.session_factory(engine)() as session:
        return store.get(session, "t-1")


FINAL = [
    store.failed(SEEN, error=TypeError("fail() got an unexpected keyword argument 'bogus'"), traceback=None,
                 dead_lettered=True),
    store.succeeded(SEEN, result={"ok": True}),
]


@pytest.mark.parametrize("final", FINAL, ids=["failure", "success"])
@pytest.mark.parametrize("late", [store.started(SEEN), store.retried(SEEN, error=RuntimeError("x"), traceback=None)],
                         ids=["started", "retry"])
def test_a_late_state_that_is_not_final_never_replaces_a_final_one(engine, final, late):
    store.write(engine, [store.started(SEEN)])
    store.write(engine, [final])
    store.write(engine, [late])
    record = read(engine)
    assert record.status == final.values["status"]
    assert record.error_type == final.values.get("error_type")


def test_a_failure_seen_outside_the_task_keeps_the_records_retry_count(engine):
    store.write(engine, [store.started(SEEN)])
    outside = store.SeenTask(task_id="t-1", task_name="stalk.fail", queue="default", args=[], kwargs={})
    store.write(engine, [store.failed(outside, error=TypeError("x"), traceback=None, dead_lettered=True,
                                      keep_retries=True)])
    record = read(engine)
    assert (record.status, record.retries, record.queue, record.worker) == ("FAILURE", 2, "default", "default-0@test")
