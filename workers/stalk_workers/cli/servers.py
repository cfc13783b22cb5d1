"""Commands that run the workers' side: worker, beat, db upgrade, and purge (which needs the broker).

``stalk api`` is the API's own (stalk_api/cli.py), ``stalk dev`` the operator's (stalk_operator/cli.py).
"""

from __future__ import annotations

from typing import Annotated

import typer

from stalk_workers import redis_tls
from stalk_workers.cli.errors import fail, load_settings
from stalk_workers.settings import Settings


def _celery_app(settings: Settings):
    from stalk_workers.factory import TaskModuleError, create_app
    from stalk_workers.queues import QueueTableError

    try:
        return create_app(settings)
    except (QueueTableError, TaskModuleError) as exc:
        fail(str(exc))


def _refused_tls(settings: Settings) -> None:
    """Exit with one line when the broker refuses this process's TLS (a wrong CA, no client
    certificate): a retry cannot fix that, and Celery would retry for minutes. A Redis that is not
    up yet is left to Celery's own retries."""
    if not redis_tls.is_tls(settings.broker_url):
        return
    import redis

    try:
        redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5, socket_timeout=5).ping()
    except redis.RedisError as exc:
        if redis_tls.ssl_cause(exc) is not None:
            fail(redis_tls.unreachable(settings.broker_url, exc))


def register(app: typer.Typer) -> None:
    db_app = typer.Typer(help="The task record database.", no_args_is_help=True)
    app.add_typer(db_app, name="db")

    @app.command()
    def worker(
        queues: Annotated[str, typer.Option("--queues", "-Q", help="Comma-separated queues to consume.")] = "default",
        concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1,
                                                        help="Processes/threads; default from the queue table.")] = None,
        pool: Annotated[str | None, typer.Option(help="prefork, threads or solo; default from the queue table.")] = None,
        loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info",
    ) -> None:
        """Run a Celery worker for the given queues (node name: <queues>@<hostname>, the pod name in Kubernetes)."""
        from stalk_workers.factory import default_node_name

        settings = load_settings()
        celery = _celery_app(settings)
        _refused_tls(settings)
        names = [q.strip() for q in queues.split(",") if q.strip()]
        table = {q.name: q for q in celery.conf.stalk_queues}
        unknown = [q for q in names if q not in table]
        if unknown:
            fail(f"unknown queue(s): {', '.join(unknown)}; the queue table has: {', '.join(table)}")
        first = table[names[0]]
        celery.worker_main([
            "worker", "-Q", ",".join(names), "-n", default_node_name(names),
            "--concurrency", str(concurrency or first.concurrency), "--pool", pool or first.pool,
            "--loglevel", loglevel, "--without-gossip",
        ])

    @app.command()
    def beat(
        schedule_file: Annotated[str, typer.Option(help="Where beat keeps its state.")] = "/tmp/stalk-beat-schedule",
        loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info",
    ) -> None:
        """Run Celery beat with the periodic tasks from STALK_BEAT_SCHEDULE. Run exactly one."""
        settings = load_settings()
        celery = _celery_app(settings)
        _refused_tls(settings)
        celery.start(["beat", "--schedule", schedule_file, "--loglevel", loglevel])

    @db_app.command("upgrade")
    def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
        """Apply the database migrations (Alembic) up to REVISION."""
        from sqlalchemy.exc import SQLAlchemyError

        from stalk_workers.records import db

        settings = load_settings()
        try:
            db.upgrade(settings.database_url, revision)
        except SQLAlchemyError as exc:
            fail(f"cannot migrate {settings.database_url}: {str(exc).splitlines()[0]}")
        typer.echo(f"database at {revision}: {settings.database_url}")

    @app.command()
    def purge(
        queue: Annotated[str, typer.Argument(help="The queue to empty.")],
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    ) -> None:
        """Delete every task waiting in QUEUE (all priority levels). Running tasks are not touched."""
        settings = load_settings()
        celery = _celery_app(settings)
        if queue not in {q.name for q in celery.conf.stalk_queues}:
            fail(f"unknown queue {queue!r}")
        if not yes and not typer.confirm(f"Delete every task waiting in {queue!r}?", default=False):
            fail("nothing purged", code=1)
        try:
            with celery.connection_for_write() as conn:
                removed = conn.default_channel.queue_purge(queue)
        except Exception as exc:  # noqa: BLE001
            fail(redis_tls.unreachable(settings.broker_url, exc))
        typer.echo(f"purged {removed} task(s) from {queue}")
