"""Finding a task by the start of its id on PostgreSQL reads an index, not the whole table.

`stalk status 3f2a` asks GET /v1/tasks?id_prefix=3f2a, which lists WHERE lower(task_id) LIKE
'3f2a%'; without migration 0004 PostgreSQL answers that with a scan of every record."""

from __future__ import annotations

import sqlalchemy as sa

from stalk_workers.records import db, store
from tests.fixtures.servers import fresh_postgres_db

ROWS = 50_000


def test_a_prefix_search_reads_the_prefix_index(postgres_server):
    url = fresh_postgres_db(postgres_server)
    db.upgrade(url)
    engine = db.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO task_records (task_id, task_name, queue, status, args, kwargs, retries,"
                " dead_lettered, source, created_at, updated_at)"
                " SELECT md5(i::text)::uuid::text, 'stalk.echo', 'default', 'SUCCESS', '[]', '{}', 0,"
                " false, 'api', now() - i * interval '1 second', now() FROM generate_series(1, :n) i"),
                {"n": ROWS})
            conn.execute(sa.text("ANALYZE task_records"))
            wanted = conn.execute(sa.text("SELECT task_id FROM task_records ORDER BY task_id LIMIT 1 OFFSET 777")).scalar()

        statements = []
        sa.event.listen(engine, "before_cursor_execute",
                        lambda conn, cursor, statement, parameters, context, many: statements.append((statement, parameters)))
        with db.session_factory(engine)() as session:
            rows, _ = store.list_page(session, where=store.TaskFilter(id_prefix=wanted[:8].upper()), limit=20)
        assert wanted in [r.task_id for r in rows]
        statement, parameters = statements[-1]

        with engine.connect() as conn:
            plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
        assert "ix_task_records_id_prefix" in plan, plan
        assert "Seq Scan" not in plan, plan
    finally:
        engine.dispose()
