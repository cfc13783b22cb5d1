"""``stalk api``: the API's own command, joined to the ``stalk`` CLI through the ``stalk.commands``
entry point group (pyproject.toml), so that the workers' CLI core never imports the API."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from stalk_workers import redis_tls
from stalk_workers.cli.errors import fail, load_settings


def without_password(url: str) -> str:
    """A URL fit for a log line: every `user:password@` becomes `user:***@` (Sentinel URLs hold several)."""
    return re.sub(r"(//[^:/@;]*:)[^@/;]*@", r"\1***@", url)


def register(app: typer.Typer) -> None:
    @app.command()
    def api(
        host: Annotated[str | None, typer.Option(help="Default STALK_API_HOST (127.0.0.1).")] = None,
        port: Annotated[int | None, typer.Option(help="Default STALK_API_PORT (8000).")] = None,
    ) -> None:
        """Run the task API with uvicorn."""
        # Imported on use: `stalk --help` and the client commands need neither uvicorn nor the app.
        from stalk_api import server
        from stalk_api.config import ApiSettings
        from stalk_api.main import InsecureBindError, create_app

        settings = load_settings(ApiSettings)
        settings = settings.model_copy(update={k: v for k, v in (("api_host", host), ("api_port", port)) if v})
        try:
            application = create_app(settings)
        except InsecureBindError as exc:
            fail(str(exc))
        server.run(application, settings)

    @app.command()
    def recover(
        once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
        every: Annotated[float, typer.Option(min=1, help="Seconds between passes when looping.")] = 30.0,
    ) -> None:
        """Publish again the accepted tasks whose messages Redis lost (docs/recovery.md). Same settings as the API."""
        import time

        import redis
        import sqlalchemy as sa

        from stalk_api.config import ApiSettings
        from stalk_api.recovery.recoverer import Recoverer
        from stalk_workers.factory import TaskModuleError, create_app
        from stalk_workers.queues import QueueTableError
        from stalk_workers.records import db

        settings = load_settings(ApiSettings)
        try:
            celery = create_app(settings.model_copy(update={"record_tasks": False}))
        except (QueueTableError, TaskModuleError) as exc:
            fail(str(exc))
        recoverer = Recoverer(
            celery=celery, sessions=db.session_factory(db.create_engine(settings.database_url)),
            client=settings.broker_client(timeout=5),
            queues=[q.name for q in celery.conf.stalk_queues], recover_after=settings.recover_after_seconds,
            key_prefix=settings.broker_key_prefix, inspect_timeout=settings.inspect_timeout_seconds)
        if not once and settings.recover_metrics_port:
            from prometheus_client import start_http_server

            try:
                start_http_server(settings.recover_metrics_port, addr=settings.recover_metrics_host,
                                  registry=recoverer.registry)
            except OSError as exc:  # e.g. a second stalk dev on this machine: recovering matters more
                typer.echo(f"warning: no /metrics on {settings.recover_metrics_host}:{settings.recover_metrics_port} "
                           f"(STALK_RECOVER_METRICS_PORT): {exc.strerror or exc}", err=True)
        while True:
            try:
                recovered = recoverer.run_once()
            except (redis.RedisError, sa.exc.SQLAlchemyError) as exc:
                # In a cluster the recoverer may start before Redis, the database or its migrations:
                # a warning per pass until they are there, not a crash loop.
                if isinstance(exc, redis.RedisError):
                    line = redis_tls.unreachable(settings.broker_url, exc)
                else:
                    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
                    line = f"cannot read the task records at {without_password(settings.database_url)}: {reason}"
                if once:
                    fail(line)
                typer.echo(f"warning: {line}; next pass in {every:g} s", err=True)
                recovered = 0
            if once or recovered:
                typer.echo("another recoverer holds the lock" if recovered is None else f"recovered {recovered} task(s)")
            if once:
                return
            time.sleep(every)
