"""The FastAPI application: ``create_app()`` wires settings, the record store, Celery and the routers."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from stalk_api.config import ApiSettings
from stalk_api.auth import BearerAuth, document_bearer
from stalk_api.metrics import ApiMetrics, BodySizeLimit, MetricsMiddleware
from stalk_api.routes import health, queues, task_types, tasks, workers
from stalk_api.submission import Gateway, SubmissionError
from stalk_workers.factory import create_app as create_celery_app
from stalk_workers.records import db

log = logging.getLogger("stalk.api")


class InsecureBindError(RuntimeError):
    """The API would listen beyond loopback with no tokens configured."""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    tokens = settings.tokens()
    if not tokens and not settings.listens_on_loopback_only():
        raise InsecureBindError(
            f"refusing to listen on {settings.api_host} without tokens: set STALK_API_TOKENS "
            "(or STALK_API_TOKENS_FILE), or listen on 127.0.0.1"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = db.create_engine(settings.database_url)
        if settings.migrate_on_start:
            db.upgrade(settings.database_url)
        # The API reads task records, never Celery results: without a result backend, send_task
        # does not subscribe to a result channel for every task it publishes.
        celery = create_celery_app(settings.model_copy(update={"record_tasks": False, "result_backend": "disabled"}))
        celery.conf.broker_transport_options = {**celery.conf.broker_transport_options,
                                                "socket_timeout": settings.broker_timeout_seconds}
        app.state.gateway = Gateway(celery=celery, sessions=db.session_factory(engine), settings=settings)
        # Everything loaded so far (FastAPI, Celery, SQLAlchemy, pydantic: ~140,000 objects) lives as
        # long as the process: out of the collector's sight, a full collection no longer walks it.
        # Batch submissions allocate enough to trigger those often (measured: 11% of a batch's CPU).
        gc.freeze()
        if not tokens:
            log.warning("no API tokens configured: listening on %s only, without authentication", settings.api_host)
        yield
        engine.dispose()
        # Not celery.pool.force_close_all(): kombu keeps producer pools in a process-wide registry
        # keyed by broker URL, so a later app on the same URL would get a closed pool.

    app = FastAPI(
        title="stalk task API",
        version="0.1.0",
        description="Submit Celery tasks, follow them to the end, and see what waits in each queue.",
        lifespan=lifespan,
    )
    metrics = ApiMetrics()
    app.state.metrics = metrics

    app.include_router(health.router)
    for module in (tasks, queues, workers, task_types):
        app.include_router(module.router, prefix="/v1")
    document_bearer(app)

    @app.exception_handler(SubmissionError)
    async def _submission_error(_: Request, exc: SubmissionError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # One readable line per problem, e.g. "body.priority: Input should be less than or equal to 9".
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(problems), "errors": jsonable_errors(exc)}, status_code=422)

    app.add_middleware(BearerAuth, tokens=tokens)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    return app


def jsonable_errors(exc: RequestValidationError) -> list[dict]:
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
