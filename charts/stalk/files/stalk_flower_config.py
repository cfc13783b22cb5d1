"""Celery settings for Flower in the stalk chart (``celery --config stalk_flower_config flower``).

Flower's image has Celery, kombu and redis-py but not stalk, so this module is the standard library
only. It reads the variables stalk's own containers get and turns them into what stalk's
workers/stalk_workers/factory.py and redis_tls.py give kombu: TLS for a ``rediss://`` broker, the
Sentinel master name (and the Sentinels' own password) for a ``sentinel://`` one, and the key prefix.
The broker URL itself stays in ``CELERY_BROKER_URL`` (from the chart's Secret, never on a command
line); Celery reads that variable before any setting. Values it refuses, stalk refuses too.
"""

import os
import ssl
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# kombu's and redis-py's spelling of the TLS options, by the STALK_REDIS_TLS_* variable that gives a file.
_TLS_FILES = {"STALK_REDIS_TLS_CA_FILE": "ssl_ca_certs", "STALK_REDIS_TLS_CERT_FILE": "ssl_certfile",
              "STALK_REDIS_TLS_KEY_FILE": "ssl_keyfile"}
# What stalk accepts for ssl_cert_reqs (redis_tls.CERT_REQS), as the ssl module's constants.
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
# stalk bounds its Sentinel connections like its Redis ones (factory.py, brokers.sentinel_kwargs).
_SENTINEL_TIMEOUT_SECONDS = 5


class StalkFlowerConfigError(ValueError):
    """Settings stalk's own containers would refuse too (the message never quotes the URL)."""


def tls_options(url, env):
    """``broker_use_ssl`` (kombu's and Flower's broker page's) for a ``rediss://`` URL (None for any other): what the URL's query
    says wins, the STALK_REDIS_TLS_* files and check fill in the rest (as redis_tls.with_tls)."""
    given = {option: env[name] for name, option in _TLS_FILES.items() if env.get(name)}
    if url.split("://", 1)[0] != "rediss":
        if given:
            raise StalkFlowerConfigError("STALK_REDIS_TLS_* files are given, but CELERY_BROKER_URL is not a "
                                         "rediss:// URL")
        return None
    options = {"ssl_cert_reqs": env.get("STALK_REDIS_TLS_CERT_REQS") or "required", **given}
    options.update((name, value) for name, value in parse_qsl(urlsplit(url).query) if name in options
                   or name in _TLS_FILES.values())
    reqs = options["ssl_cert_reqs"].removeprefix("CERT_").lower()
    if reqs not in _CERT_REQS:
        raise StalkFlowerConfigError("ssl_cert_reqs must be required, optional or none")
    if bool(options.get("ssl_certfile")) != bool(options.get("ssl_keyfile")):
        raise StalkFlowerConfigError("a client certificate needs both ssl_certfile and ssl_keyfile")
    for option, path in options.items():
        if option != "ssl_cert_reqs" and not os.path.isfile(path):
            raise StalkFlowerConfigError(f"{option} {path}: no such file")
    return {**options, "ssl_cert_reqs": _CERT_REQS[reqs]}


def without_tls_query(url):
    """``url`` without its ``ssl_*`` query: kombu 5 lets a URL's TLS options replace broker_use_ssl
    as a whole (kombu.utils.url.parse_url), so the files added above would be dropped."""
    parts = urlsplit(url)
    query = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True)
             if not name.startswith("ssl_")]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def broker_options(url, env):
    """kombu's ``broker_transport_options`` (Flower's broker page reads them too): the key prefix,
    and for a ``sentinel://`` URL the master name and the Sentinels' own password."""
    options = {}
    if env.get("STALK_BROKER_KEY_PREFIX"):
        options["global_keyprefix"] = env["STALK_BROKER_KEY_PREFIX"]
    master_name = env.get("STALK_BROKER_MASTER_NAME", "")
    if not url.startswith("sentinel://"):
        if master_name:
            raise StalkFlowerConfigError("STALK_BROKER_MASTER_NAME is set but CELERY_BROKER_URL is not a "
                                         "sentinel:// URL")
        return options
    if not master_name:
        raise StalkFlowerConfigError("CELERY_BROKER_URL is a sentinel:// URL: set STALK_BROKER_MASTER_NAME")
    options["master_name"] = master_name
    if env.get("STALK_BROKER_SENTINEL_PASSWORD"):
        # Given explicitly, redis-py copies no socket options into them: the timeouts must be here too.
        options["sentinel_kwargs"] = {"password": env["STALK_BROKER_SENTINEL_PASSWORD"],
                                      "socket_timeout": _SENTINEL_TIMEOUT_SECONDS,
                                      "socket_connect_timeout": _SENTINEL_TIMEOUT_SECONDS}
    return options


_url = os.environ.get("CELERY_BROKER_URL", "")
broker_use_ssl = tls_options(_url, os.environ)
broker_transport_options = broker_options(_url, os.environ)
if broker_use_ssl is not None and without_tls_query(_url) != _url:
    # Celery reads the broker URL from the environment before any setting, so it is changed there,
    # in this process only.
    os.environ["CELERY_BROKER_URL"] = without_tls_query(_url)
