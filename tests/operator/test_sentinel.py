"""The operator on a Sentinel-managed Redis: ``broker.url: sentinel://...`` with ``broker.sentinel``.

Real Sentinels (tests/fixtures/sentinel.py) and real Celery publishing; the API server is
``RecordingKube`` as in test_loop.py. One broker loop keeps its client across a failover and reads
the right figures from the new primary; Sentinels with a password get it from a Secret; a URL and
``broker.sentinel`` that do not fit together are a BrokerInvalid with the reason.
"""

from __future__ import annotations

import asyncio

import pytest
from celery import Celery

from stalk_operator import status as st
from stalk_operator.loop import BrokerLoop
from stalk_operator.membership import BrokerKey, broker_label, broker_url_problem, sentinel_mismatch
from stalk_operator.spec import SecretKey, SentinelRef, SpecError, parse_taskqueue
from tests.fixtures.sentinel import sentinel_cluster, start_sentinel_cluster  # noqa: F401 - a fixture, by name
from tests.operator.conftest import drain_writer, tick
from tests.operator.test_loop import RecordingKube, body, make_supervisor


class SecretKube(RecordingKube):
    """RecordingKube with Secrets (namespace, name) -> {key: value}."""

    def __init__(self, secrets: dict, **kwargs):
        super().__init__(**kwargs)
        self.secrets = secrets

    def read_secret_key(self, namespace, name, key):
        return self.secrets.get((namespace, name), {}).get(key)


def sentinel_body(name: str, cluster, **sentinel) -> dict:
    tq = body(name, cluster.url(0))
    tq["spec"]["broker"]["sentinel"] = {"masterName": cluster.master_name, **sentinel}
    return tq


def producer(cluster, sentinel_password: str | None = None) -> Celery:
    app = Celery("producer", broker=cluster.url(0), set_as_current=False)
    options = {"master_name": cluster.master_name}
    if sentinel_password:
        options["sentinel_kwargs"] = {"password": sentinel_password}
    app.conf.broker_transport_options = options
    return app


def condition(state, kind: str) -> dict:
    return next(c for c in state.status["conditions"] if c["type"] == kind)


def test_one_broker_loop_reads_through_sentinel_and_follows_a_failover(sentinel_cluster):  # noqa: F811
    cluster = sentinel_cluster
    kube = RecordingKube(replicas={"workers": 1})
    supervisor, registry = make_supervisor(kube)
    registry.upsert(parse_taskqueue(sentinel_body("emails", cluster)), None)
    app = producer(cluster)
    for _ in range(12):
        app.send_task("demo.send", queue="emails")

    async def run() -> list[dict]:
        (key,) = await supervisor.membership.refresh(0)
        assert key == BrokerKey(cluster.url(0), "", cluster.master_name, "")
        loop = BrokerLoop(key, supervisor)
        members = supervisor.membership.members(key)
        written = []
        try:
            await loop.tick(members)
            await drain_writer(supervisor.writer)
            written.append(dict(members[0].status))
            cluster.wait_synced()
            cluster.wait_promoted(cluster.kill_primary())
            app.send_task("demo.send", queue="emails")  # on the new primary only
            for _ in range(3):  # the first tick may meet the dead connection; the loop goes on
                await loop.tick(members)
            await drain_writer(supervisor.writer)
            written.append(dict(members[0].status))
        finally:
            loop.close()
        return written

    try:
        before, after = asyncio.run(run())
    finally:
        app.close()
    assert before["waiting"] == 12 and kube.scales[0] == ("workers", 3)
    assert after["waiting"] == 13
    assert st.condition_status(after["conditions"], st.METRICS_AVAILABLE) == "True"


def test_the_sentinels_password_comes_from_a_secret(tmp_path):
    cluster = start_sentinel_cluster(tmp_path / "sentinel", sentinel_password="s3ntinel")
    try:
        kube = SecretKube({("ns", "sentinel"): {"password": "s3ntinel\n"}, ("ns", "wrong"): {"password": "nope"}},
                          replicas={"workers": 0, "other": 0})
        supervisor, registry = make_supervisor(kube)
        registry.upsert(parse_taskqueue(sentinel_body(
            "emails", cluster, passwordSecretKeyRef={"name": "sentinel", "key": "password"})), None)
        wrong = sentinel_body("other", cluster, passwordSecretKeyRef={"name": "wrong", "key": "password"})
        wrong["spec"]["scaleTargetRef"]["name"] = "other"
        registry.upsert(parse_taskqueue(wrong), None)
        app = producer(cluster, "s3ntinel")
        try:
            for _ in range(6):
                app.send_task("demo.send", queue="emails")
        finally:
            app.close()
        tick(supervisor)
        emails, other = registry.get(("ns", "emails")), registry.get(("ns", "other"))
        assert emails.status["waiting"] == 6 and ("workers", 2) in kube.scales
        assert condition(other, st.METRICS_AVAILABLE)["status"] == "False"
        assert "s3ntinel" not in str(kube.statuses) and "nope" not in str(kube.events)
    finally:
        cluster.stop()


def test_a_sentinel_url_in_a_secret_without_broker_sentinel_is_broker_invalid():
    kube = SecretKube({("ns", "redis"): {"url": "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380"}},
                      replicas={"workers": 0})
    supervisor, registry = make_supervisor(kube)
    tq = body("emails", "")
    tq["spec"]["broker"] = {"secretKeyRef": {"name": "redis", "key": "url"}}
    registry.upsert(parse_taskqueue(tq), None)
    tick(supervisor)
    ready = condition(registry.get(("ns", "emails")), st.READY)
    assert (ready["status"], ready["reason"]) == ("False", "BrokerInvalid")
    assert "set broker.sentinel.masterName" in ready["message"]


SENTINEL = SentinelRef("mymaster", None)


@pytest.mark.parametrize(("url", "sentinel", "problem"), [
    ("sentinel://s1:26379/0;sentinel://s2:26379", SENTINEL, None),
    ("sentinel://s1", SENTINEL, None),
    ("sentinel://s1:26379", None, "set broker.sentinel.masterName"),
    ("redis://r:6379/0", SENTINEL, "broker.sentinel is set, but the spec.broker.url is not a sentinel:// URL"),
    ("sentinel://s1:26379;redis://r:6379", SENTINEL, "address 2 of the Sentinel URL does not start with sentinel://"),
    ("sentinel://s1:port", SENTINEL, "address 1 of the Sentinel URL has a port that is not a number"),
    ("sentinel://s1:26379/zero", SENTINEL, "names database 'zero': it must be a number"),
    ("sentinel://:pw@:26379", SENTINEL, "address 1 of the Sentinel URL has no host"),
], ids=["three-parts", "default-port", "no-master-name", "master-name-on-redis", "mixed-schemes", "bad-port",
        "bad-db", "no-host"])
def test_sentinel_urls_and_broker_sentinel_must_fit(url, sentinel, problem):
    where = "spec.broker.url"
    found = sentinel_mismatch(url, sentinel, where) or broker_url_problem(url, where)
    assert (found is None) if problem is None else (problem in found), found
    assert found is None or "pw" not in found


def test_the_label_shows_every_sentinel_never_the_password():
    assert broker_label("sentinel://:pw@s1:26379/2;sentinel://s2:26380") == "sentinel://s1:26379/2;sentinel://s2:26380"


def test_broker_sentinel_is_read_from_the_spec():
    tq = body("emails", "sentinel://s1:26379")
    tq["spec"]["broker"]["sentinel"] = {"masterName": "m", "passwordSecretKeyRef": {"name": "s", "key": "k"}}
    assert parse_taskqueue(tq).broker.sentinel == SentinelRef("m", SecretKey("s", "k"))
    tq["spec"]["broker"]["sentinel"] = {}
    with pytest.raises(SpecError, match="masterName"):
        parse_taskqueue(tq)
