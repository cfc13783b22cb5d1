"""Redis over TLS for what the workers' package shares: how a rediss:// URL is completed from the
settings (table), the queue reader's Lua read, the result backend, and the CLI's one-line failures."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from celery import states
from pydantic import ValidationError

from stalk_workers import redis_tls
from stalk_workers.factory import create_app
from stalk_workers.queue_reader import QueueReader
from stalk_workers.result_backend import StalkRedisBackend
from stalk_workers.settings import Settings

PLAIN = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(("url", "files", "expected"), [
    (PLAIN, {}, PLAIN),
    ("rediss://h:6380/0", {}, "rediss://h:6380/0?ssl_cert_reqs=required"),
    ("rediss://h:6380/0", {"ca": "/ca.pem"}, "rediss://h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem"),
    ("rediss://u:p%40ss@h:6380/0?ssl_cert_reqs=none", {"ca": "/ca.pem"},
     "rediss://u:p%40ss@h:6380/0?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem"),
    ("rediss://h/0?ssl_ca_certs=/mine.pem", {"ca": "/ca.pem", "cert": "/c.pem", "key": "/k.pem"},
     "rediss://h/0?ssl_ca_certs=/mine.pem&ssl_cert_reqs=required&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"),
    ("rediss://h/0?ssl_cert_reqs=CERT_REQUIRED", {}, "rediss://h/0?ssl_cert_reqs=required"),
], ids=["plain URLs unchanged", "ssl_cert_reqs always set, required by default",
        "a mounted CA added", "the URL's own ssl_cert_reqs and password kept", "the URL's own CA wins",
        "kombu's constant spelled as redis-py reads it"])
def test_with_tls(url, files, expected):
    assert redis_tls.with_tls(url, **files) == expected


@pytest.mark.parametrize(("env", "message"), [
    ({"STALK_BROKER_URL": "rediss://h/0?ssl_cert_reqs=yes"}, "ssl_cert_reqs must be required, optional or none"),
    ({"STALK_BROKER_URL": "rediss://h/0?ssl_cert_reqs=required&ssl_certfile=/c.pem"},
     "a client certificate needs both ssl_certfile and ssl_keyfile"),
    ({"STALK_REDIS_TLS_CA_FILE": "/etc/hosts"}, "neither STALK_BROKER_URL nor STALK_RESULT_BACKEND is a rediss://"),
    ({"STALK_BROKER_URL": "rediss://h/0", "STALK_REDIS_TLS_CA_FILE": "/nowhere/ca.pem"},
     "STALK_REDIS_TLS_CA_FILE /nowhere/ca.pem: no such file"),
    ({"STALK_BROKER_URL": "rediss://h/0", "STALK_REDIS_TLS_CERT_REQS": "CERT_NONE"}, "redis_tls_cert_reqs"),
], ids=["an ssl_cert_reqs kombu would read as none", "a certificate without its key", "files for no TLS URL",
        "a missing file", "cert reqs spelled as a constant in the setting"])
def test_settings_refuse(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_settings_fold_the_files_into_both_urls(monkeypatch, tls_certs):
    monkeypatch.setenv("STALK_BROKER_URL", "rediss://:secret@127.0.0.1:6380/0")
    monkeypatch.setenv("STALK_RESULT_BACKEND", "rediss://:secret@127.0.0.1:6380/1")
    monkeypatch.setenv("STALK_REDIS_TLS_CA_FILE", str(tls_certs.ca))
    monkeypatch.setenv("STALK_REDIS_TLS_CERT_FILE", str(tls_certs.client_cert))
    monkeypatch.setenv("STALK_REDIS_TLS_KEY_FILE", str(tls_certs.client_key))
    settings = Settings()
    for url in (settings.broker_url, settings.result_backend):
        assert redis_tls.tls_files(url) == [str(tls_certs.ca), str(tls_certs.client_cert), str(tls_certs.client_key)]
    # The folded URL read again (a child process gets it as STALK_BROKER_URL) comes out the same.
    monkeypatch.setenv("STALK_BROKER_URL", settings.broker_url)
    assert Settings().broker_url == settings.broker_url


SERVERS = pytest.mark.parametrize("server", ["tls_redis", "mtls_redis"],
                                  ids=["server CA only", "client certificate required"])


@SERVERS
def test_the_queue_reader_reads_over_tls(request, server):
    tls = request.getfixturevalue(server)
    broker, _ = tls.fresh_pair(db=10)
    app = create_app(Settings(broker_url=broker, result_backend="disabled", record_tasks=False))
    for _ in range(3):
        app.send_task("stalk.echo", queue="default")
    app.send_task("stalk.echo", queue="default", priority=9)
    reader = QueueReader(tls.client(10))
    stats = reader.read(["default"])["default"]
    assert (stats.waiting, stats.in_flight, stats.scheduled) == (4, 0, 0)
    assert stats.oldest_wait_seconds is not None


@SERVERS
@pytest.mark.parametrize("off", ["", "result-store"], ids=["stalk's backend", "Celery's"])
def test_results_are_stored_and_read_over_tls(request, server, off):
    tls = request.getfixturevalue(server)
    broker, results = tls.fresh_pair(db=12)
    app = create_app(Settings(broker_url=broker, result_backend=results, record_tasks=False,
                              library_shortcuts_off=off))
    assert isinstance(app.backend, StalkRedisBackend) == (not off)
    app.backend.store_result("t-tls", {"answer": 42}, states.SUCCESS)
    assert app.AsyncResult("t-tls").get(timeout=5) == {"answer": 42}
    assert tls.client(13).exists(app.backend.get_key_for_task("t-tls"))


def stalk(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stalk_workers", *args], capture_output=True, text=True,
                          timeout=60, env={**{k: v for k, v in os.environ.items() if not k.startswith("STALK_")},
                                           **env})


@pytest.mark.parametrize("case", ["wrong CA", "no client certificate"])
def test_the_cli_fails_in_one_line_without_the_password(mtls_redis, tls_certs, tmp_path, case):
    url = (mtls_redis.url(14, ca=tls_certs.wrong_ca) if case == "wrong CA"
           else mtls_redis.url(14, client_cert=False))
    # A password in the URL must not reach the terminal either.
    url = url.replace("rediss://", "rediss://:hunter2@")
    env = {"STALK_BROKER_URL": url, "STALK_RESULT_BACKEND": url, "STALK_DATABASE_URL": f"sqlite:///{tmp_path}/r.db"}
    for args in (["purge", "default", "--yes"], ["recover", "--once"], ["worker", "-Q", "default"],
                 ["beat", "--schedule-file", str(tmp_path / "beat-schedule")]):
        started = time.monotonic()
        result = stalk(env, *args)
        assert time.monotonic() - started < 30, "a TLS failure is not a hang"
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"error: cannot reach the broker at rediss://127.0.0.1:{mtls_redis.port}/14: ")
        assert "hunter2" not in result.stderr and "ssl_ca_certs" not in result.stderr
        assert ("certificate verify failed" if case == "wrong CA" else "none is given") in lines[0], lines
