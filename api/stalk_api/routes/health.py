"""Liveness, readiness and metrics: no token needed, so probes and Prometheus can reach them."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from stalk_api.deps import GatewayDep, MetricsDep
from stalk_workers import redis_tls

router = APIRouter(tags=["health"])


# async: answered on the event loop, never waiting behind a busy thread pool.
@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


def _broker_problem(gateway) -> str | None:
    try:
        with gateway.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            conn.default_channel.client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"broker: {exc}{redis_tls.handshake_hint(exc, gateway.settings.broker_url)}"
    return None


@router.get("/readyz", summary="Redis and the database are reachable, and the database can be written",
            responses={503: {"description": "A dependency is unreachable; the body says which."}})
async def readyz(gateway: GatewayDep) -> JSONResponse:
    problems = []
    broker = await run_in_threadpool(_broker_problem, gateway)
    if broker:
        problems.append(broker)
    database = await gateway.database.readiness_problem()
    if database:
        problems.append(f"database: {database}")
    if problems:
        return JSONResponse({"status": "unavailable", "detail": "; ".join(problems)}, status_code=503,
                            headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
