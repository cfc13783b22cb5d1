"""Redis Sentinel brokers: parsing kombu's ``sentinel://`` URL, and a redis-py client on the current primary.

kombu (and Celery's result backend) spell a Sentinel-managed Redis as one ``sentinel://`` address per
Sentinel, ``;`` between them, plus the transport option ``master_name``, the name the Sentinels monitor
the primary under::

    STALK_BROKER_URL="sentinel://:pw@s1:26379/0;sentinel://s2:26379;sentinel://s3:26379"
    STALK_BROKER_MASTER_NAME=mymaster

Both read the Redis password, user and database number from the *first* address only; the password
is the primary's (``requirepass``/ACL), not the Sentinels'. Sentinels that require a password of their
own get it through the transport option ``sentinel_kwargs`` (``STALK_BROKER_SENTINEL_PASSWORD``).

stalk's own redis-py clients (the API's queue reads, the recoverer, the operator's Lua read, the CLI)
come from ``redis_client`` so that they find the primary the way kombu does and follow a failover:
redis-py's ``Sentinel.master_for`` asks the Sentinels for the primary on every new connection, and a
connection to a primary that was demoted (READONLY) is dropped and made again to the new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:  # imported on use: Settings checks URLs with this module, and `stalk --help` needs no redis
    import redis

SENTINEL_SCHEME = "sentinel://"
# kombu's SentinelTransport.default_port (tests/workers/test_sentinel_settings.py checks they agree).
DEFAULT_SENTINEL_PORT = 26379


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


@dataclass(frozen=True)
class SentinelUrl:
    """What kombu reads from a ``sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None  # the primary's, from the first address


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The Sentinel addresses and the first address's credentials and database, as kombu reads them.

    Raises ValueError with a message that never quotes the URL (it may hold a password)."""
    sentinels: list[tuple[str, int]] = []
    first = None
    for n, part in enumerate((p.strip() for p in url.split(";")), start=1):
        if not part:
            continue
        if not part.startswith(SENTINEL_SCHEME):
            raise ValueError(f"address {n} of the Sentinel URL does not start with sentinel:// "
                             "(give every Sentinel as sentinel://host:port, separated by ';')")
        parts = urlsplit(part)
        try:
            port = parts.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ValueError(f"address {n} of the Sentinel URL has a port that is not a number "
                             "from 1 to 65535") from None
        if not parts.hostname:
            raise ValueError(f"address {n} of the Sentinel URL has no host")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"address {n} of the Sentinel URL names database {path!r}: it must be a number")
        if first is None:
            first = parts
        sentinels.append((parts.hostname, port))
    if first is None:
        raise ValueError("the Sentinel URL names no Sentinel")
    db = first.path.strip("/")
    return SentinelUrl(sentinels=tuple(sentinels), db=int(db) if db else 0,
                       username=unquote(first.username) if first.username else None,
                       password=unquote(first.password) if first.password else None)


def sentinel_kwargs(password: str | None, *, socket_timeout: float | None,
                    socket_connect_timeout: float | None) -> dict | None:
    """The connection options for the Sentinel nodes themselves; None lets redis-py (and kombu) take
    the socket options of the Redis connections, which is what they do without a password."""
    if not password:
        return None
    # Given explicitly, redis-py copies nothing into them: the timeouts must be here too.
    return {"password": password, "socket_timeout": socket_timeout, "socket_connect_timeout": socket_connect_timeout}


def redis_client(url: str, *, master_name: str | None = None, sentinel_password: str | None = None,
                 socket_timeout: float | None = None, socket_connect_timeout: float | None = None) -> redis.Redis:
    """A redis-py client on the broker: ``redis.Redis.from_url`` for redis://, rediss:// and unix://,
    the current primary of ``master_name`` for sentinel:// (it follows a failover). Opens nothing yet."""
    import redis
    from redis.sentinel import Sentinel

    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_connect_timeout}
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **timeouts)
    if not master_name:
        raise ValueError("a sentinel:// broker needs the master name the Sentinels monitor the primary under")
    parsed = parse_sentinel_url(url)
    manager = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs(sentinel_password, **timeouts),
                       **timeouts)
    return manager.master_for(master_name, db=parsed.db, username=parsed.username, password=parsed.password,
                              **timeouts)


def close_client(client: redis.Redis) -> None:
    """Close a client from ``redis_client``, with the connections it opened to the Sentinels."""
    client.close()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    if manager is not None:
        manager.close()  # redis-py >= 8.1

