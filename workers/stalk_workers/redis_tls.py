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
    query = parse_qsl(parts.query, keep_blank_values=True)
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
