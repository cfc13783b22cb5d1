"""How ``stalk api`` serves the app: uvicorn, with a bound on the requests inside the app and a
deadline for reading each request.

Both protect the one event loop every request shares. At 1,000 connections every request used to
go through FastAPI's whole stack (~1 ms of the loop's CPU), most of them only to wait 2 s for a
database slot and get a 503 (issue 12): the loop stayed saturated and ``/healthz`` waited behind
hundreds of them (p99 0.3-1.1 s). ``Admission`` holds the requests beyond the bound at the door,
before FastAPI, where waiting costs nothing, and never holds the probes. ``ReadDeadline`` closes connections
that do not send a whole request in time (slow-loris clients), which uvicorn (0.54) allows for
ever: its keep-alive timeout runs only between requests and stops at the first byte.
"""

from __future__ import annotations

import asyncio
import json
import logging

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from stalk_api.config import ApiSettings
from stalk_api.database import RETRY_AFTER_SECONDS

log = logging.getLogger("stalk.api")

# Never refused for load: a liveness probe that fails under load gets a busy pod restarted, which
# only moves its load elsewhere; readiness and metrics are how operators see the overload.
ALWAYS_ADMITTED = frozenset({"/healthz", "/readyz", "/metrics"})


class Admission:
    """At most ``limit`` requests inside the app at once. The next ones wait at the door, where
    waiting costs the loop nothing (no parsing of their body, no FastAPI), for up to ``wait``
    seconds; then they are answered 503 with Retry-After.

    Not a 503 at once: a client that retries without honouring Retry-After would come straight
    back, and the loop would spend itself on refusals (measured at 256 connections: 29,086 503s
    in 15 s, 2xx answers down to 0.75x, /healthz no better; docs/benchmarks.md).
    """

    def __init__(self, app: ASGIApp, limit: int, wait: float) -> None:
        self.app, self.limit, self.wait = app, limit, wait
        self._places = asyncio.Semaphore(limit) if limit else None
        body = json.dumps({"detail": f"the API is busy: {limit} requests were in progress for {wait:g}s; "
                                     f"try again in {RETRY_AFTER_SECONDS}s"}).encode()
        self._start = {"type": "http.response.start", "status": 503,
                       "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                   (b"retry-after", str(RETRY_AFTER_SECONDS).encode())]}
        self._body = {"type": "http.response.body", "body": body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._places is None or scope["type"] != "http" or scope["path"] in ALWAYS_ADMITTED:
            await self.app(scope, receive, send)
            return
        if not self._places.locked():
            await self._places.acquire()  # a free place, nobody ahead: no timer to set
        else:
            try:
                async with asyncio.timeout(self.wait):
                    await self._places.acquire()
            except TimeoutError:
                await send(self._start)
                await send(self._body)
                return
        try:
            await self.app(scope, receive, send)
        finally:
            self._places.release()


class ReadDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline: a request (line, headers and body) must arrive
    whole within ``read_timeout`` of the connection opening or of its first byte; otherwise the
    client gets 408 (when no answer is being written) and the connection is closed.

    Relies on uvicorn's internals (the parser callbacks of ``HttpToolsProtocol``): bounded in
    pyproject.toml, listed in docs/architecture.md, tested in tests/api/test_slow_clients.py.
    """

    read_timeout: float = 30.0
    _deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.read_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            body = b'{"detail":"the request did not arrive in time"}'
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        log.info("closed a connection that sent no whole request within %gs", self.read_timeout)
        self.transport.close()


def protocol(read_timeout: float) -> type[ReadDeadline]:
    return type("ReadDeadline", (ReadDeadline,), {"read_timeout": read_timeout})


def run(app: ASGIApp, settings: ApiSettings) -> None:
    admission = Admission(app, settings.api_max_requests, settings.api_database_wait_seconds)
    uvicorn.run(admission, host=settings.api_host, port=settings.api_port,
                http=protocol(settings.api_read_timeout_seconds), log_level="info", proxy_headers=True,
                timeout_keep_alive=settings.api_keep_alive_seconds, access_log=False)
