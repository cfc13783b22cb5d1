"""The TaskQueue CRD's Sentinel brokers on a real API server: ``broker.url: sentinel://...`` with
``broker.sentinel`` applies; a URL and ``broker.sentinel`` that do not fit are refused with a message."""

from __future__ import annotations

import json

import pytest

from tests.operator.conftest import taskqueue
from tests.operator.test_crd import apply

pytestmark = pytest.mark.cluster

URL = "sentinel://:pw@s1.redis:26379/0;sentinel://s2.redis:26379;sentinel://s3.redis"
SENTINEL = {"masterName": "mymaster", "passwordSecretKeyRef": {"name": "sentinel", "key": "password"}}


def test_a_sentinel_broker_applies_and_reads_back(kube_cluster, taskqueue_crd, kube_namespace):
    obj = taskqueue("emails", queue="emails", broker_url=URL, target="w", maxReplicas=3)
    obj["spec"]["broker"]["sentinel"] = SENTINEL
    apply(kube_cluster, kube_namespace, obj)
    got = json.loads(kube_cluster.kubectl("get", "tq", "emails", "-o", "json", namespace=kube_namespace).stdout)
    assert got["spec"]["broker"]["sentinel"] == SENTINEL and got["spec"]["broker"]["url"] == URL


def test_broker_sentinel_with_the_url_in_a_secret_applies(kube_cluster, taskqueue_crd, kube_namespace):
    obj = taskqueue("emails", queue="emails", broker_url="", target="w", maxReplicas=3)
    obj["spec"]["broker"] = {"secretKeyRef": {"name": "redis", "key": "url"}, "sentinel": {"masterName": "m"}}
    apply(kube_cluster, kube_namespace, obj)


@pytest.mark.parametrize(
    ("broker", "message"),
    [
        ({"url": URL}, "broker.url is a sentinel:// URL: set broker.sentinel.masterName"),
        ({"url": "redis://r:6379/0", "sentinel": {"masterName": "m"}},
         "broker.sentinel is set, but broker.url is not a sentinel:// URL"),
        ({"url": "sentinel://s1:26379;redis://s2:26379", "sentinel": {"masterName": "m"}},
         "each starting with sentinel://"),
        ({"url": URL, "sentinel": {}}, "masterName: Required value"),
        ({"url": URL, "sentinel": {"masterName": ""}}, "should be at least 1 chars long"),
        ({"url": URL, "sentinel": {"masterName": "m", "passwordSecretKeyRef": {"name": "s"}}}, "key: Required value"),
    ],
    ids=["sentinel-url-without-master-name", "master-name-on-a-redis-url", "mixed-schemes", "no-master-name",
         "empty-master-name", "password-ref-without-key"],
)
def test_inconsistent_sentinel_brokers_are_refused_with_a_message(kube_cluster, taskqueue_crd, kube_namespace,
                                                                  broker, message):
    obj = taskqueue("bad", queue="q", broker_url="redis://r:6379/0", target="w", maxReplicas=10)
    obj["spec"]["broker"] = broker
    result = apply(kube_cluster, kube_namespace, obj, check=False)
    assert result.returncode != 0, "the API server accepted an inconsistent Sentinel broker"
    assert message in result.stderr, result.stderr
