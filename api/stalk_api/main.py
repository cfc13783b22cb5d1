"""The FastAPI application: ``create_app()`` wires settings, the record store, Celery and the routers."""

from __future__ import annotations

import gc
import logging
import re
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from stalk_api import docs
from stalk_api.config import ApiSettings, InsecureBindError
from stalk_api.database import RETRY_AFTER_SECONDS, Busy, Database
from stalk_api.auth import BearerAuth, document_bearer
from stalk_api.links import document_links
from stalk_api.metrics import ApiMetrics, BodySizeLimit, MetricsMiddleware
from stalk_api.routes import health, queues, task_types, tasks, workers
from stalk_api.submission import Gateway, SubmissionError, short_error
from stalk_workers.factory import create_app as create_celery_app
from stalk_workers.records import db

log = logging.getLogger("stalk.api")


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
        if settings.migrate_on_start:
            db.upgrade(settings.database_url)
        database = Database.open(settings.database_url, connections=settings.api_database_connections,
                                 wait_seconds=settings.api_database_wait_seconds,
                                 sqlite_executemany=settings.shortcut("sqlite-executemany"))
        # The API reads task records, never Celery results: without a result backend, send_task
        # does not subscribe to a result channel for every task it publishes.
        celery = create_celery_app(settings.model_copy(update={"record_tasks": False, "result_backend": "disabled"}))
        # A request never sits in kombu's reconnect loop (100 retries by default, in the writer
        # every submission waits for): one connection attempt, bounded like every Redis
        # answer, then a 503.
        timeout = settings.broker_timeout_seconds
        celery.conf.broker_transport_options = {**celery.conf.broker_transport_options, "socket_timeout": timeout,
                                                "socket_connect_timeout": timeout, "max_retries": 0,
                                                "connect_retries_timeout": timeout}
        celery.conf.broker_connection_timeout = timeout
        app.state.gateway = Gateway(celery=celery, database=database, settings=settings)
        # Everything loaded so far (FastAPI, Celery, SQLAlchemy, pydantic: ~140,000 objects) lives as
        # long as the process: out of the collector's sight, a full collection no longer walks it.
        # Batch submissions allocate enough to trigger those often (measured: 11% of a batch's CPU).
        gc.freeze()
        if not tokens:
            log.warning("no API tokens configured: listening on %s only, without authentication", settings.api_host)
        yield
        app.state.gateway.writer.close()
        app.state.gateway.leftovers.close(app.state.gateway)
        database.dispose()
        # Not celery.pool.force_close_all(): kombu keeps producer pools in a process-wide registry
        # keyed by broker URL, so a later app on the same URL would get a closed pool.

    app = FastAPI(
        title="stalk task API",
        version="0.1.0",
        description="Submit Celery tasks, follow them to the end, and see what waits in each queue.",
        lifespan=lifespan,
        # Served by stalk_api.docs with local assets instead (FastAPI's pages load them from a CDN).
        docs_url=None,
        redoc_url=None,
    )
    metrics = ApiMetrics()
    app.state.metrics = metrics

    app.include_router(health.router)
    app.include_router(docs.router)
    for module in (tasks, queues, workers, task_types):
        app.include_router(module.router, prefix="/v1")
    if tokens:
        document_bearer(app)
    document_validation_problems(app)
    document_links(app)

    @app.exception_handler(SubmissionError)
    async def _submission_error(_: Request, exc: SubmissionError) -> JSONResponse:
        return problem(exc.status_code, exc.detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path only (POST, not GET and POST).
            headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed_methods(app, request)))}
        return problem(exc.status_code, exc.detail, headers)

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        return problem(503, str(exc))

    @app.exception_handler(SQLAlchemyError)
    async def _database_error(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        # A read that met a database fault: the same 503 a submission gets, never a 500.
        log.warning("database error: %s", exc)
        return problem(503, f"the task database is unavailable: {short_error(exc)}")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        if (hint := not_json(request, exc)) is not None:
            return problem(415, hint)
        # One readable line per problem, e.g. "body.priority: Input should be less than or equal to 9".
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(problems), "errors": jsonable_errors(exc)}, status_code=422)

    app.add_middleware(BearerAuth, tokens=tokens)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    return app


def allowed_methods(app: FastAPI, request: Request) -> set[str]:
    """The methods the OpenAPI document gives the path: a literal path (``/v1/tasks/batch``) before a
    template that also matches it (``/v1/tasks/{task_id}``), as the document reads."""
    paths = app.openapi()["paths"]
    path = request.url.path
    operations = paths.get(path)
    if operations is None:
        operations = next((ops for template, ops in paths.items()
                           if re.fullmatch(re.sub(r"\{[^/}]+\}", "[^/]+", template), path)), {})
    return {method.upper() for method in operations}


def problem(status_code: int, detail: str, headers: dict | None = None) -> JSONResponse:
    """An error answer; every 503 says when to try again (the condition is expected to pass)."""
    headers = dict(headers or {})
    if status_code == 503:
        headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


def document_validation_problems(app: FastAPI) -> None:
    """Describe the 422 body as ``_validation_error`` writes it: one readable ``detail`` line, and the
    problems one by one in ``errors`` (FastAPI's default document says ``detail`` is the list)."""
    build = app.openapi

    def openapi() -> dict:
        schema = build()
        schemas = schema.get("components", {}).get("schemas", {})
        if "HTTPValidationError" in schemas:
            schemas["HTTPValidationError"] = {
                "title": "HTTPValidationError", "type": "object", "required": ["detail", "errors"],
                "properties": {
                    "detail": {"type": "string", "title": "Detail"},
                    "errors": {"type": "array", "title": "Errors", "items": {"$ref": "#/components/schemas/ValidationError"}},
                },
            }
        return schema

    app.openapi = openapi


def not_json(request: Request, exc: RequestValidationError) -> str | None:
    """What to say when the body was sent as something other than JSON, else None.

    FastAPI (0.165) parses a body as JSON only when its Content-Type says JSON; any other body (curl's
    -d sends application/x-www-form-urlencoded) reaches validation as raw bytes, and the default
    message ("Input should be a valid dictionary") does not say what to change.
    """
    if not any(e["loc"] == ("body",) and isinstance(e.get("input"), bytes) for e in exc.errors()):
        return None
    sent = request.headers.get("content-type")
    return (f"the request body must be JSON: send it with 'Content-Type: application/json' "
            f"({f'got {sent!r}' if sent else 'no Content-Type was sent'})")


def jsonable_errors(exc: RequestValidationError) -> list[dict]:
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
