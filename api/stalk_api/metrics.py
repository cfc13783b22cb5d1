"""The API's Prometheus metrics. Names carry a ``stalk_api_`` prefix so they never collide."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Receive, Scope, Send


class ApiMetrics:
    def __init__(self) -> None:
        # A registry per app: two apps in one process (tests) do not share counters.
        self.registry = CollectorRegistry()
        self.requests = Counter("stalk_api_requests_total", "HTTP requests answered.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("stalk_api_request_duration_seconds", "Time to answer an HTTP request.",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.submitted = Counter("stalk_api_tasks_submitted_total", "Tasks recorded and published.",
                                 ["task", "queue"], registry=self.registry)


class MetricsMiddleware:
    """Counts requests by route template (``/v1/tasks/{task_id}``), not by raw path."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = route_template(scope)
            self.metrics.requests.labels(scope["method"], template, str(status["code"])).inc()
            self.metrics.latency.labels(scope["method"], template).observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """``/v1/tasks/{task_id}`` for ``/v1/tasks/3f2…``: bounded label values, whatever the ids.

    FastAPI (0.16x) keeps an included router's prefix outside the matched route, so the template is
    rebuilt from the request path and its path parameters rather than read from the route.
    """
    # FastAPI's routes set "route"; Starlette's own (/openapi.json) set only "endpoint".
    if scope.get("route") is None and scope.get("endpoint") is None:
        return "unmatched"
    names = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    return "/".join(f"{{{names[part]}}}" if part in names else part for part in scope["path"].split("/"))


class BodySizeLimit:
    """Refuse request bodies over ``limit`` bytes with 413, before reading them all into memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(send, self.limit)
            return
        received = 0
        exceeded = answered = False

        async def limited_receive():
            nonlocal received, exceeded
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                exceeded = True
                raise _BodyTooLarge
            return message

        async def guarded_send(message):
            nonlocal answered
            if exceeded:
                # FastAPI turns any error while reading the body into its own 400 ("There was an
                # error parsing the body"): a chunked body over the limit is answered 413 instead.
                if message["type"] == "http.response.start" and not answered:
                    answered = True
                    await _too_large(send, self.limit)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not answered:
                await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail":"request body is larger than the limit of {limit} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
