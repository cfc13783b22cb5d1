"""Settings of the API process: the shared ``Settings`` plus where it listens and who may call it."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field

from stalk_api.recovery.rules import RECOVER_AFTER_SECONDS
from stalk_workers.settings import Settings


class InsecureBindError(RuntimeError):
    """The API cannot start securely: it would listen beyond loopback without tokens, or its tokens
    cannot be read. ``stalk api`` prints the message as one line."""


class TokensFileError(InsecureBindError):
    """STALK_API_TOKENS_FILE is missing or unreadable (starting without its tokens would be open)."""


class ApiSettings(Settings):
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    # Comma-separated bearer tokens; or one token per line in ``api_tokens_file`` (a mounted Secret).
    api_tokens: str = ""
    api_tokens_file: Path | None = None
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_batch_tasks: int = Field(1000, ge=1)
    # Apply database migrations when the API starts (dev); the Helm chart runs them as a Job instead.
    migrate_on_start: bool = True
    # How long to wait for workers to answer a remote-control inspection.
    inspect_timeout_seconds: float = Field(0.8, gt=0, le=5)
    # Finding lists nobody consumes walks the broker's keyspace (stalk_workers.unconsumed), so one
    # look serves GET /v1/queues for this long; 0 looks on every request.
    unconsumed_scan_seconds: float = Field(10.0, ge=0, le=3600)
    # How long a publish may wait for Redis's answer before the submission fails with a 503. Writes
    # go one at a time (stalk_api/writer.py), so a Redis that accepts connections but does not answer
    # (paused, stalled fork, half-open connection) must not hold every submission forever.
    broker_timeout_seconds: float = Field(5.0, gt=0, le=60)
    # Database calls in flight at once, each on a worker thread with a pooled connection of its
    # own; more wait on the event loop (no thread, no connection held) for up to
    # ``api_database_wait_seconds``, then are answered 503 with Retry-After.
    api_database_connections: int = Field(8, ge=1, le=100)
    api_database_wait_seconds: float = Field(2.0, gt=0, le=60)
    # Requests inside the app at once (waiting for a database slot included); the next ones wait
    # at the door (for up to ``api_database_wait_seconds`` too), then are answered 503 with
    # Retry-After, so an overload cannot saturate the event loop that /healthz shares
    # (stalk_api/server.py). 0: no limit. Probes and /metrics never wait.
    api_max_requests: int = Field(64, ge=0)
    # A request must arrive whole (line, headers, body) within this long of the connection opening
    # or of its first byte; slower clients get 408 and are disconnected (slow-loris).
    api_read_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    # An idle keep-alive connection is closed after this long. Longer than the idle timeouts of the
    # proxies and clients in front (nginx 75 s is the longest common one; AWS ALB 60 s): the side
    # that closes first must be the one that would send next, or a request sent as the server
    # closes gets no answer (uvicorn's 5 s cut connections that a busy client left idle).
    api_keep_alive_seconds: float = Field(90.0, gt=0, le=3600)
    # A task whose message is gone from Redis is published again once its record has not changed
    # for this long (the default and why: stalk_api/recovery/rules.py, docs/recovery.md); at least
    # 10 s, past the API's publish window (STALK_BROKER_TIMEOUT_SECONDS, 5 s) where nothing is lost.
    recover_after_seconds: float = Field(RECOVER_AFTER_SECONDS, ge=10)
    # Where a looping `stalk recover` serves /metrics (stalk_recover_tasks_recovered_total); 0 turns
    # it off. Next to the workers' 9818, as their host default is.
    recover_metrics_host: str = "0.0.0.0"
    recover_metrics_port: int = Field(9819, ge=0, le=65535)

    def tokens(self) -> frozenset[str]:
        tokens = {t.strip() for t in self.api_tokens.split(",") if t.strip()}
        if self.api_tokens_file is not None:
            try:
                text = self.api_tokens_file.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise TokensFileError(f"cannot read STALK_API_TOKENS_FILE {self.api_tokens_file}: "
                                      f"{getattr(exc, 'strerror', None) or exc}") from None
            tokens |= {line.strip() for line in text.splitlines() if line.strip()}
        return frozenset(tokens)

    def listens_on_loopback_only(self) -> bool:
        if self.api_host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.api_host).is_loopback
        except ValueError:
            return False
