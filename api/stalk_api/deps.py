"""Typed dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from stalk_api.database import Database
from stalk_api.metrics import ApiMetrics
from stalk_api.submission import Gateway


# The cheap dependencies are async: a sync one costs a thread-pool hop on every request.
async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


# No session per request: a route hands its database work to ``Database.run``, which opens and
# closes the session on the worker thread that does the work (see stalk_api.database).
async def get_database(request: Request) -> Database:
    return request.app.state.gateway.database


async def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
DatabaseDep = Annotated[Database, Depends(get_database)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
