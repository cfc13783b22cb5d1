"""Liveness, readiness and metrics: no token needed, so probes and Prometheus can reach them."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stalk_api.deps import GatewayDep, MetricsDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis and the database are reachable",
            responses={503: {"description": "A dependency is unreachable; the body says which."}})
def readyz(gateway: GatewayDep) -> JSONResponse:
    problems = []
    try:
        with gateway.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            conn.default_channel.client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        problems.append(f"broker: {exc}")
    try:
        with gateway.sessions() as session:
            session.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        problems.append(f"database: {str(exc).splitlines()[0]}")
    if problems:
        return JSONResponse({"status": "unavailable", "detail": "; ".join(problems)}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
