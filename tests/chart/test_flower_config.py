"""The chart's Flower config module (charts/stalk/files/stalk_flower_config.py) against stalk's own
settings: the same environment gives Flower the TLS options, master name, Sentinels' password and
key prefix that stalk's Settings and create_app give kombu, and what stalk refuses it refuses too.
Two copies of one rule (the module cannot import stalk: Flower's image has none), so this proves
they agree. tests/chart/test_flower.py runs it in a real Flower."""

from __future__ import annotations

import importlib.util
import os
import ssl
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import ValidationError

from stalk_workers.factory import create_app
from stalk_workers.settings import Settings
from tests.chart.conftest import CHART

SENTINEL_URL = "sentinel://127.0.0.1:26379/0;sentinel://127.0.0.1:26380"
CONSTANTS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


@pytest.fixture(scope="module")
def module():
    spec = importlib.util.spec_from_file_location("stalk_flower_config", CHART / "files" / "stalk_flower_config.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def stalk_settings(monkeypatch, env: dict[str, str]) -> Settings:
    for name in list(os.environ):
        if name.startswith("STALK_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


@pytest.fixture
def files(tmp_path):
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / name).write_text("not read here\n")
    return {"STALK_REDIS_TLS_CA_FILE": str(tmp_path / "ca.crt"), "STALK_REDIS_TLS_CERT_FILE": str(tmp_path / "tls.crt"),
            "STALK_REDIS_TLS_KEY_FILE": str(tmp_path / "tls.key")}


@pytest.mark.parametrize(("url", "variables", "cert_reqs"), [
    ("rediss://:pw@127.0.0.1:6380/0", ["STALK_REDIS_TLS_CA_FILE"], None),
    ("rediss://127.0.0.1:6380/0", ["STALK_REDIS_TLS_CA_FILE", "STALK_REDIS_TLS_CERT_FILE", "STALK_REDIS_TLS_KEY_FILE"],
     "optional"),
    ("rediss://127.0.0.1:6380/0?ssl_ca_certs=/etc/ssl/certs/ca-certificates.crt&ssl_cert_reqs=CERT_NONE",
     ["STALK_REDIS_TLS_CA_FILE"], "required"),
    ("rediss://127.0.0.1:6380/0", [], None),
], ids=["a mounted CA, certificates required by default", "a client certificate, the check from the setting",
        "what the URL says wins", "no files: the certificate still checked"])
def test_tls_options_are_the_ones_stalk_folds_into_its_url(module, monkeypatch, files, url, variables, cert_reqs):
    env = {"STALK_BROKER_URL": url, "STALK_RESULT_BACKEND": "redis://127.0.0.1:6379/1",
           **{name: files[name] for name in variables}, **({"STALK_REDIS_TLS_CERT_REQS": cert_reqs} if cert_reqs else {})}
    stalk = dict(parse_qsl(urlsplit(stalk_settings(monkeypatch, env).broker_url).query))
    expected = {**stalk, "ssl_cert_reqs": CONSTANTS[stalk["ssl_cert_reqs"]]}
    assert module.tls_options(url, env) == expected
    # kombu lets a URL's TLS query replace broker_use_ssl: the module's URL carries none.
    assert "ssl_" not in module.without_tls_query(url)


@pytest.mark.parametrize("env", [
    {"STALK_BROKER_URL": "redis://127.0.0.1:6379/0"},
    {"STALK_BROKER_URL": "redis://127.0.0.1:6379/0", "STALK_BROKER_KEY_PREFIX": "stalk:"},
    {"STALK_BROKER_URL": SENTINEL_URL, "STALK_BROKER_MASTER_NAME": "mymaster"},
    {"STALK_BROKER_URL": SENTINEL_URL, "STALK_BROKER_MASTER_NAME": "mymaster",
     "STALK_BROKER_SENTINEL_PASSWORD": "s3ntinel", "STALK_BROKER_KEY_PREFIX": "team-a:"},
], ids=["plain Redis: nothing", "a key prefix", "Sentinel: the master name", "the Sentinels' password and a prefix"])
def test_transport_options_are_create_apps(module, monkeypatch, env):
    env = {"STALK_RESULT_BACKEND": "redis://127.0.0.1:6379/1", **env}
    stalk = create_app(stalk_settings(monkeypatch, env)).conf.broker_transport_options
    ours = module.broker_options(env["STALK_BROKER_URL"], env)
    assert ours == {name: stalk[name] for name in ("global_keyprefix", "master_name", "sentinel_kwargs")
                    if name in stalk}


@pytest.mark.parametrize(("env", "message"), [
    ({"STALK_BROKER_URL": "rediss://h/0?ssl_cert_reqs=yes"}, "ssl_cert_reqs must be required, optional or none"),
    ({"STALK_BROKER_URL": "rediss://h/0?ssl_certfile=/etc/hosts"},
     "a client certificate needs both ssl_certfile and ssl_keyfile"),
    ({"STALK_BROKER_URL": "redis://h/0", "STALK_REDIS_TLS_CA_FILE": "/etc/hosts"}, "not a rediss:// URL"),
    ({"STALK_BROKER_URL": "rediss://h/0", "STALK_REDIS_TLS_CA_FILE": "/nowhere/ca.pem"}, "/nowhere/ca.pem: no such file"),
    ({"STALK_BROKER_URL": SENTINEL_URL}, "set STALK_BROKER_MASTER_NAME"),
    ({"STALK_BROKER_URL": "redis://h/0", "STALK_BROKER_MASTER_NAME": "mymaster"}, "is not a sentinel:// URL"),
], ids=["a check kombu would read as none", "a certificate without its key", "files for no TLS URL",
        "a missing file", "Sentinel without a master name", "a master name without Sentinel"])
def test_refuses_what_stalk_refuses(module, monkeypatch, env, message):
    with pytest.raises(ValidationError):
        stalk_settings(monkeypatch, {"STALK_RESULT_BACKEND": "redis://127.0.0.1:6379/1", **env})
    url = env["STALK_BROKER_URL"]
    with pytest.raises(module.StalkFlowerConfigError, match=message):
        module.tls_options(url, env)
        module.broker_options(url, env)
