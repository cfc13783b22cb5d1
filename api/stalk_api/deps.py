"""Typed dependencies shared by the routers."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from stalk_api.metrics import ApiMetrics
from stalk_api.submission import Gateway


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

# The cheap dependencies are async: a sync one costs a thread-pool hop on every request.
_bearer = HTTPBearer(auto_error=False, description="A token from STALK_API_TOKENS.")


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    tokens: frozenset[str] = request.app.state.tokens
    if not tokens:
        return  # no tokens configured: only allowed on loopback, checked at start-up
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not any(hmac.compare_digest(credentials.credentials.encode(), t.encode()) for t in tokens):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
