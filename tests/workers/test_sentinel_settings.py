"""Sentinel settings: what the Celery app is given, what is refused (one line, never the password),
and `stalk beat` through Sentinel."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from stalk_workers.factory import create_app
from stalk_workers.settings import Settings
from tests.fixtures.sentinel import sentinel_cluster  # noqa: F401 - a fixture, found by name
from tests.fixtures.stack import running_stack
from tests.workers.test_beat_and_worker_cli import beat_runs_twice

URL = "sentinel://:primary-pw@127.0.0.1:26379/0;sentinel://127.0.0.1:26380"


@pytest.mark.parametrize(("off", "transport"), [
    ("", "stalk_workers.transport:SentinelTransport"),
    ("channel-client", "stalk_workers.transport:SentinelCapturingTransport"),
    ("all", None),
], ids=["both-shortcuts", "templates-only", "kombu-own"])
def test_a_sentinel_broker_gets_stalks_transport_or_kombus(off, transport):
    app = create_app(Settings(broker_url=URL, result_backend=URL, broker_master_name="m", library_shortcuts_off=off))
    assert app.conf.broker_transport == transport
    assert app.conf.broker_transport_options["master_name"] == "m"
    assert "sentinel_kwargs" not in app.conf.broker_transport_options  # redis-py copies the socket options


def test_the_default_sentinel_port_is_kombus():
    from kombu.transport.redis import SentinelTransport

    from stalk_workers.brokers import DEFAULT_SENTINEL_PORT, parse_sentinel_url

    assert DEFAULT_SENTINEL_PORT == SentinelTransport.default_port
    assert parse_sentinel_url("sentinel://s1;sentinel://s2:26380").sentinels == (("s1", 26379), ("s2", 26380))


def test_the_sentinels_password_and_the_result_backends_own_master_name():
    app = create_app(Settings(broker_url=URL, result_backend=URL.replace("/0", "/1"), broker_master_name="m",
                              result_backend_master_name="results", broker_sentinel_password="s3"))
    broker, backend = app.conf.broker_transport_options, app.conf.result_backend_transport_options
    assert broker["sentinel_kwargs"] == backend["sentinel_kwargs"] == {
        "password": "s3", "socket_timeout": 5, "socket_connect_timeout": 5}
    assert (broker["master_name"], backend["master_name"]) == ("m", "results")
    assert "s3" not in repr(Settings(broker_url=URL, broker_master_name="m", broker_sentinel_password="s3"))


@pytest.mark.parametrize(("settings", "message"), [
    ({"broker_url": URL}, "STALK_BROKER_URL is a sentinel:// URL: set STALK_BROKER_MASTER_NAME"),
    ({"result_backend": URL}, "STALK_RESULT_BACKEND is a sentinel:// URL: set STALK_BROKER_MASTER_NAME"),
    ({"broker_master_name": "m"}, "STALK_BROKER_MASTER_NAME is set but STALK_BROKER_URL is not a sentinel:// URL"),
    ({"broker_url": "sentinel://:primary-pw@h:port", "broker_master_name": "m"},
     "STALK_BROKER_URL: address 1 of the Sentinel URL has a port that is not a number"),
    ({"broker_url": URL + ";redis://h:6379", "broker_master_name": "m"},
     "STALK_BROKER_URL: address 3 of the Sentinel URL does not start with sentinel://"),
], ids=["no-master-name", "result-backend-without-master-name", "master-name-without-sentinel", "bad-port",
        "mixed-schemes"])
def test_inconsistent_sentinel_settings_are_refused(settings, message):
    with pytest.raises(ValidationError) as caught:
        Settings(**settings)
    (error,) = caught.value.errors()
    assert message in error["msg"] and "primary-pw" not in error["msg"]


def test_the_cli_says_it_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALK_")}
    done = subprocess.run([sys.executable, "-m", "stalk_workers", "recover", "--once"], capture_output=True, text=True,
                          env={**env, "STALK_BROKER_URL": URL, "STALK_DATABASE_URL": f"sqlite:///{tmp_path}/r.db"},
                          timeout=60)
    assert done.returncode == 1
    assert "STALK_BROKER_MASTER_NAME" in done.stderr and "Traceback" not in done.stderr
    assert "primary-pw" not in done.stderr


def test_beat_schedules_through_sentinel(sentinel_cluster, tmp_path):  # noqa: F811
    cluster = sentinel_cluster
    with running_stack(cluster.primary, None, tmp_path, broker_url=cluster.url(0), result_backend=cluster.url(1),
                       broker_master_name=cluster.master_name) as stack:
        assert len(beat_runs_twice(stack, tmp_path)) >= 2
