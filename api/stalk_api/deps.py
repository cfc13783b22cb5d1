"""Typed dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from stalk_api.metrics import ApiMetrics
from stalk_api.submission import Gateway


# The cheap dependencies are async: a sync one costs a thread-pool hop on every request.
async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.gateway.sessions() as session:
        yield session


async def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
SessionDep = Annotated[Session, Depends(get_session)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
