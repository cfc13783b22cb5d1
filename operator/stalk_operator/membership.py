"""Which TaskQueues the tick acts on, grouped by broker: leadership, target conflicts, broker Secrets.

Everything here runs once a second in the supervisor (``loop.BrokerSupervisor``); the broker loops
only read its answer (``Membership.members``, ``Leadership.leading``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import urlsplit

from kubernetes.client.exceptions import ApiException
from redis.connection import parse_url

from stalk_operator import status as st
from stalk_operator.broker_tls import TlsFiles
from stalk_operator.kube import KubeApi
from stalk_operator.kube_actuator import send_event
from stalk_operator.metrics import OperatorMetrics
from stalk_operator.reporting import Reporter
from stalk_operator.spec import SentinelRef
from stalk_operator.state import Registry, TaskQueueState
from stalk_workers import redis_tls
from stalk_workers.brokers import is_sentinel_url, parse_sentinel_url

log = logging.getLogger(__name__)

# How often to look again for a Secret holding a broker URL, or for a missing scale target.
RESOLVE_INTERVAL_SECONDS = 10.0


class BrokerKey(NamedTuple):
    """One Redis the operator reads (one loop, one client): TaskQueues that agree on all of it share it."""

    url: str
    key_prefix: str
    master_name: str = ""  # a sentinel:// URL's primary, by the name its Sentinels know it under
    sentinel_password: str = ""  # the Sentinels' own password (from broker.sentinel.passwordSecretKeyRef)

    def __repr__(self) -> str:  # never the passwords
        return f"BrokerKey({broker_label(self.url)!r}, {self.key_prefix!r}, {self.master_name!r})"


# The Ready reason of a TaskQueue whose broker URL redis-py cannot use.
BROKER_INVALID = "BrokerInvalid"
# The schemes redis-py's from_url accepts, and kombu's Sentinel addresses.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")


def broker_label(url: str) -> str:
    """The broker as shown in metrics and messages: host, port and db, never the password (every
    address of a sentinel:// URL, ';' between them)."""
    labels = []
    for address in url.split(";"):
        parts = urlsplit(address.strip())
        if not parts.hostname:  # unix:///run/redis.sock
            labels.append(f"{parts.scheme}://{parts.path}")
            continue
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:  # shown, never used: the URL is refused with its own message
            port = ""
        labels.append(f"{parts.scheme}://{parts.hostname}{port}{parts.path}")
    return ";".join(labels)


class SecretFault(Exception):
    """A Secret a TaskQueue names cannot be used: the condition's reason and message. ``hiccup``: the
    API server did not answer, so what was read before may still be used."""

    def __init__(self, reason: str, message: str, *, hiccup: bool = False) -> None:
        super().__init__(message)
        self.reason, self.message, self.hiccup = reason, message, hiccup


class Leadership:
    """Whether this operator may act; on becoming the leader it resumes from the objects."""

    def __init__(self, registry: Registry, metrics: OperatorMetrics, is_leader: Callable[[], bool]) -> None:
        self._registry = registry
        self._metrics = metrics
        self._is_leader = is_leader
        self.leading = False

    def update(self) -> None:
        """Look at the Lease's answer now (the supervisor and every tick do, before acting)."""
        leader = self._is_leader()
        if leader and not self.leading:
            # Resume from what the previous leader wrote (status, history), so a hand-over does not flap.
            for state in self._registry:
                state.resume_from_seen()
        self.leading = leader
        self._metrics.is_leader.set(1 if leader else 0)


def mark_conflicts(registry: Registry) -> None:
    """Two TaskQueues scaling one workload would fight over its replicas: neither may act."""
    by_target: dict[tuple[str, str, str], list[TaskQueueState]] = {}
    for state in registry:
        cfg = state.config
        by_target.setdefault((cfg.namespace, cfg.target.kind, cfg.target.name), []).append(state)
    for sharing in by_target.values():
        for state in sharing:
            others = sorted(s.config.name for s in sharing if s is not state)
            state.target_conflict = (
                f"{state.config.target.kind} {state.config.target.name} is also scaled by TaskQueue "
                f"{', '.join(others)}; only one TaskQueue may scale a workload" if others else None
            )


class Membership:
    """TaskQueues by broker (URL, key prefix), with broker URLs resolved from Secrets now and then."""

    def __init__(self, registry: Registry, kube: KubeApi, metrics: OperatorMetrics, leadership: Leadership,
                 reporter: Reporter) -> None:
        self.registry = registry
        self._kube = kube
        self._metrics = metrics
        self._leadership = leadership
        self._reporter = reporter
        self._groups: dict[BrokerKey, list[TaskQueueState]] = {}
        self._tls_files = TlsFiles()

    async def refresh(self, now: float) -> dict[BrokerKey, list[TaskQueueState]]:
        """Group the registry's TaskQueues by broker (conflicts marked); the groups are also kept."""
        mark_conflicts(self.registry)
        groups: dict[BrokerKey, list[TaskQueueState]] = {}
        for state in self.registry:
            try:
                url = await self._resolve_broker(state, now)
            except Exception:  # noqa: BLE001 - one TaskQueue's failure must not stop the others
                log.exception("TaskQueue %s/%s: cannot resolve its broker", *state.config.key)
                continue
            if url is None:
                continue
            sentinel = state.config.broker.sentinel
            password = ""
            if sentinel is not None and sentinel.password is not None:
                password = await self._resolve_sentinel_password(state, now)
                if password is None:
                    continue
            key = BrokerKey(url, state.config.broker.key_prefix, sentinel.master_name if sentinel else "", password)
            groups.setdefault(key, []).append(state)
        self._groups = groups
        return groups

    def brokers(self) -> list[BrokerKey]:
        return list(self._groups)

    def members(self, key: BrokerKey) -> list[TaskQueueState]:
        return self._groups.get(key, [])

    async def _resolve_broker(self, state: TaskQueueState, now: float) -> str | None:
        """The broker URL of one TaskQueue, or None with the TaskQueue told why (a condition, and a
        Warning event once): whatever is wrong with one TaskQueue's broker stays with it."""
        broker = state.config.broker
        if broker.url:
            return await self._accept(state, now, broker.url, "spec.broker.url")
        if now - state.broker_checked_at < RESOLVE_INTERVAL_SECONDS:
            return state.broker_url
        state.broker_checked_at = now
        where = f"key {broker.secret_key!r} of Secret {broker.secret_name}"
        try:
            url = await self._secret_value(state, broker.secret_name, broker.secret_key, "a Redis URL")
        except SecretFault as fault:
            if fault.hiccup and state.broker_url is not None:  # go on with the URL read before
                return state.broker_url
            return await self._fault(state, now, fault.reason, fault.message)
        # A value written with `echo` or from a file ends with a newline the user never meant.
        return await self._accept(state, now, url.strip(), where)

    async def _resolve_sentinel_password(self, state: TaskQueueState, now: float) -> str | None:
        """The Sentinels' password from ``broker.sentinel.passwordSecretKeyRef`` (read again every
        RESOLVE_INTERVAL_SECONDS), or None with the TaskQueue told why."""
        ref = state.config.broker.sentinel.password
        if now - state.sentinel_checked_at < RESOLVE_INTERVAL_SECONDS and state.sentinel_password is not None:
            return state.sentinel_password
        state.sentinel_checked_at = now
        try:
            state.sentinel_password = (await self._secret_value(state, ref.name, ref.key, "a password")).strip()
        except SecretFault as fault:
            if not (fault.hiccup and state.sentinel_password is not None):  # else: the one read before
                state.sentinel_password = None
                return await self._fault(state, now, fault.reason,
                                         f"{fault.message} (broker.sentinel.passwordSecretKeyRef)")
        return state.sentinel_password

    async def _accept(self, state: TaskQueueState, now: float, url: str, where: str) -> str | None:
        tls = state.config.broker.tls
        # A string test, every time: broker.sentinel may change while the URL (in a Secret) does not.
        problem = sentinel_mismatch(url, state.config.broker.sentinel, where)
        # Checked when it was first seen (spec URLs come by every second); TLS Secrets now and then.
        if problem is None and url == state.broker_source and (
                tls is None or now - state.tls_checked_at < RESOLVE_INTERVAL_SECONDS):
            return state.broker_url
        problem = problem or broker_url_problem(url, where)
        if problem is None and tls is not None and not redis_tls.is_tls(url):
            problem = f"broker.tls is set, but the {where} is not a rediss:// URL"
        if problem is not None:
            return await self._fault(state, now, BROKER_INVALID, problem)
        used = url
        if redis_tls.is_tls(url):
            state.tls_checked_at = now
            used = await self._with_tls(state, now, url, where)
            if used is None:
                return None
        state.broker_source, state.broker_url, state.broker_problem = url, used, None
        return used

    async def _with_tls(self, state: TaskQueueState, now: float, url: str, where: str) -> str | None:
        """``url`` with the files of spec.broker.tls in its query (written from their Secrets), or None
        with the TaskQueue told why."""
        tls = state.config.broker.tls
        files: dict[str, str] = {}
        wanted = []
        if tls is not None and tls.ca is not None:
            wanted.append(("ca", tls.ca.name, tls.ca.key, "ca.pem"))
        if tls is not None and tls.client_cert_secret is not None:
            wanted += [("cert", tls.client_cert_secret, "tls.crt", "crt.pem"),
                       ("key", tls.client_cert_secret, "tls.key", "key.pem")]
        for role, name, key, suffix in wanted:
            try:
                value = await self._secret_value(state, name, key, "PEM")
            except SecretFault as fault:
                if fault.hiccup and state.broker_url is not None:  # go on with the files written before
                    return state.broker_url
                return await self._fault(state, now, fault.reason, f"{fault.message}, named by broker.tls")
            files[role] = self._tls_files.write(value, suffix)
        try:
            return redis_tls.with_tls(url, cert_reqs=tls.cert_reqs if tls else "required", **files)
        except redis_tls.TlsUrlError as exc:
            return await self._fault(state, now, BROKER_INVALID, f"the {where}: {exc}")

    async def _secret_value(self, state: TaskQueueState, name: str, key: str, what: str) -> str:
        """The text of one key of a Secret in the TaskQueue's namespace; a SecretFault says why not."""
        namespace = state.config.namespace
        try:
            value = await asyncio.to_thread(self._kube.read_secret_key, namespace, name, key)
        except ApiException as exc:
            self._metrics.api_errors.labels("read_secret").inc()
            log.warning("cannot read Secret %s/%s: %s", namespace, name, exc.reason)
            raise SecretFault("BrokerSecretUnreadable", f"cannot read Secret {name}: {exc.status} {exc.reason}",
                              hiccup=True) from None
        except UnicodeDecodeError:
            raise SecretFault(BROKER_INVALID, f"the key {key!r} of Secret {name} is not text, so not {what}") from None
        if value is None:
            raise SecretFault("BrokerSecretNotFound", f"Secret {name} has no key {key!r} (or does not exist)")
        return value

    async def _fault(self, state: TaskQueueState, now: float, reason: str, message: str) -> None:
        state.broker_url, state.broker_source, state.broker_problem = None, None, (reason, message)
        if not self._leadership.leading:
            return None
        self._reporter.conditions(state, now, st.Condition(st.READY, False, reason, message))
        if state.announce(reason):
            log.warning("TaskQueue %s/%s: %s: %s", *state.config.key, reason, message)
            await send_event(self._kube, state, "Warning", reason, message)
        return None


def sentinel_mismatch(url: str, sentinel: SentinelRef | None, where: str) -> str | None:
    """Why ``url`` and ``broker.sentinel`` do not fit together (one without the other), or None."""
    if is_sentinel_url(url) and sentinel is None:
        return (f"the {where} is a sentinel:// URL: set broker.sentinel.masterName to the name its "
                "Sentinels monitor the primary under")
    if sentinel is not None and not is_sentinel_url(url):
        return f"broker.sentinel is set, but the {where} is not a sentinel:// URL"
    return None


def broker_url_problem(url: str, where: str) -> str | None:
    """Why redis-py would refuse ``url`` (as ``redis.Redis.from_url`` parses it, without I/O), or
    kombu a ``sentinel://`` one; None when it is usable.

    The message never quotes the value: a Secret's key may hold anything, API tokens included.
    """
    if is_sentinel_url(url):
        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            return f"the {where} is not a valid Sentinel URL: {exc}"
        return None
    try:
        parse_url(url)
    except (ValueError, TypeError):
        if not url.startswith(REDIS_SCHEMES):
            return f"the {where} is not a Redis URL: it does not start with {', '.join(REDIS_SCHEMES)}"
        return f"the {where} is not a valid Redis URL (look at its port, database number and options)"
    return None
