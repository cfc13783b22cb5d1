"""TLS to Redis, spelled the one way redis-py, kombu and Celery all read: the query of a ``rediss://`` URL.

``rediss://host:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem``
is what Celery's documentation tells its users to write for the broker and the result backend; kombu
5.7 (``kombu.utils.url.parse_url``), Celery's Redis backend and ``redis.Redis.from_url`` each turn those
parameters into the same ``SSLConnection`` arguments. So every stalk client (Celery's, the API's,
the operator's, the CLI's) takes the URL and nothing else, and no component can disagree with another.

Files that cannot be written into a URL kept in a Secret (a CA mounted by the chart, the operator's
copies of a TaskQueue's Secrets) are added to its query by ``with_tls``. Pure: no I/O.
"""

from __future__ import annotations

import ssl
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TLS_SCHEME = "rediss"
# ssl_cert_reqs as kombu's parse_ssl_cert_reqs, Celery's backend and redis-py accept it. kombu turns
# any other value into CERT_NONE with a warning, so stalk refuses it instead.
CERT_REQS = ("required", "optional", "none", "CERT_REQUIRED", "CERT_OPTIONAL", "CERT_NONE")
# The query parameters that carry files, by the setting that can add them.
FILE_PARAMS = {"ca": "ssl_ca_certs", "cert": "ssl_certfile", "key": "ssl_keyfile"}


class TlsUrlError(ValueError):
    """A rediss:// URL whose TLS parameters cannot be used (the message never quotes the URL)."""


def is_tls(url: str) -> bool:
    return url.split("://", 1)[0] == TLS_SCHEME


def with_tls(url: str, *, ca: str | None = None, cert: str | None = None, key: str | None = None,
             cert_reqs: str = "required") -> str:
    """``url`` with the TLS parameters it lacks added to its query; a parameter the URL already has
    wins (it was written on purpose). URLs that are not ``rediss://`` come back unchanged.

    Without ``ssl_cert_reqs`` kombu would connect without checking the server's certificate (and
    Celery's backend refuses the URL), so it is always set: ``cert_reqs`` when the URL has none.
    """
    if not is_tls(url):
        return url
    parts = urlsplit(url)
    # kombu and Celery also read CERT_REQUIRED; redis-py (the API's and the operator's reads) only required.
    query = [(name, value.removeprefix("CERT_").lower() if name == "ssl_cert_reqs" and value in CERT_REQS else value)
             for name, value in parse_qsl(parts.query, keep_blank_values=True)]
    present = {name for name, _ in query}
    wanted = {"ssl_cert_reqs": cert_reqs, FILE_PARAMS["ca"]: ca, FILE_PARAMS["cert"]: cert,
              FILE_PARAMS["key"]: key}
    query += [(name, value) for name, value in wanted.items() if value and name not in present]
    url = urlunsplit(parts._replace(query=urlencode(query, safe="/")))
    if (problem := tls_problem(url)) is not None:
        raise TlsUrlError(problem)
    return url


def tls_problem(url: str) -> str | None:
    """Why kombu, Celery or redis-py would use this ``rediss://`` URL's TLS parameters insecurely or
    not at all, or None (also for URLs that are not ``rediss://``)."""
    if not is_tls(url):
        return None
    params = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    reqs = params.get("ssl_cert_reqs")
    if reqs is None:
        return "a rediss:// URL needs ssl_cert_reqs (required, optional or none)"
    if reqs not in CERT_REQS:
        return f"ssl_cert_reqs must be required, optional or none, not {reqs!r}"
    if bool(params.get("ssl_certfile")) != bool(params.get("ssl_keyfile")):
        return "a client certificate needs both ssl_certfile and ssl_keyfile"
    return None


def tls_files(url: str) -> list[str]:
    """The files a ``rediss://`` URL's query names (CA, client certificate, key)."""
    if not is_tls(url):
        return []
    params = dict(parse_qsl(urlsplit(url).query))
    return [params[name] for name in FILE_PARAMS.values() if params.get(name)]


def pool_options(url: str) -> dict[str, list]:
    """Transport options that tell kombu's process-wide pools apart by TLS: kombu 5.7 keys them
    (kombu.pools, ``Connection.__eqhash__``) by host, port, user, password, database and transport
    options, not by TLS, so two apps in one process that differ only in CA or client certificate
    (the operator's, after a rotation; tests) would share connections. kombu's channel ignores an
    option it does not know."""
    if not is_tls(url):
        return {}
    return {"stalk_tls": sorted(p for p in parse_qsl(urlsplit(url).query) if p[0].startswith("ssl_"))}


def shown(url: str) -> str:
    """The URL as an error line may show it: scheme, host, port and database; never the password
    (an ACL user's) nor the query (file paths, which say nothing useful there)."""
    parts = urlsplit(url)
    if not parts.hostname:  # unix:///run/redis.sock
        return f"{parts.scheme}://{parts.path}"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def unreachable(url: str, exc: BaseException) -> str:
    """The one line a command prints when the broker at ``url`` did not answer: never the password."""
    return f"cannot reach the broker at {shown(url)}: {exc}{handshake_hint(exc, url)}"


def handshake_hint(exc: BaseException, url: str) -> str:
    """What to add to the message of a failed connection to ``url``: a server that asks for a
    client certificate (``tls-auth-clients yes``) ends a TLS 1.3 handshake without one with an
    "EOF occurred in violation of protocol" or "certificate required" that names no cause."""
    cause = ssl_cause(exc)
    if (is_tls(url) and not dict(parse_qsl(urlsplit(url).query)).get("ssl_certfile")
            and cause is not None and not isinstance(cause, ssl.SSLCertVerificationError)):
        return " (does the server ask for a client certificate? none is given)"
    return ""


def ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ssl module's error behind ``exc`` (redis-py raises ConnectionError from it, kombu and
    Celery wrap that again), or None."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ssl.SSLError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None
