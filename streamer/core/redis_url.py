"""Which Redis a URL names: one server, a Redis Cluster, or a primary that Sentinel watches.

``redis://``, ``rediss://`` and ``unix://`` name one server, as redis-py reads them. Two more
schemes name several hosts at once, comma-separated, each ``host[:port]``:

``redis+cluster://[user:password@]host:port[,host:port...][/0][?options]``
    A Redis Cluster; the hosts are startup nodes (any reachable one will do, the client learns
    the rest). ``rediss+cluster://`` connects to every node over TLS. Cluster mode has database
    0 only.
``redis+sentinel://[user:password@]host:port[,host:port...]/<master-name>[/db][?options]``
    The hosts are sentinels; the client asks them for the current primary of ``master-name``
    and follows it through a failover. The credentials are those of the Redis servers; the
    sentinels are asked without any.

``options`` are redis-py's URL query options (``socket_timeout``, ``ssl_ca_certs``, ...), applied
to every data node. Pure: this module parses, ``streamer.io.redis_clients`` connects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import unquote, urlsplit

from streamer.core.redact import redact_url


class RedisMode(Enum):
    SINGLE = "single"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel",)
SCHEMES = SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES

_DEFAULT_PORT = {RedisMode.CLUSTER: 6379, RedisMode.SENTINEL: 26379}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL.

    ``node_url`` is a one-server ``redis://`` (or ``rediss://``) URL with the credentials, the
    database and the options that every data node gets; its host is the first of ``hosts``
    (a placeholder: the client connects to the nodes it discovers). For ``SINGLE`` it is the URL
    itself and ``hosts`` is empty.
    """

    mode: RedisMode
    node_url: str = field(repr=False)  # may hold the password
    hosts: tuple[tuple[str, int], ...] = ()
    master: str | None = None

    @property
    def cluster(self) -> bool:
        """Keys must be laid out for a cluster (hash tags, see the contracts)."""
        return self.mode is RedisMode.CLUSTER


def is_redis_url(location: str) -> bool:
    """Whether ``location`` is a Redis URL of any mode (and not a path)."""
    return location.partition("://")[0] in SCHEMES and "://" in location


def _hosts(netloc_hosts: str, default_port: int, shown: str) -> tuple[tuple[str, int], ...]:
    """``host[:port]`` (``[v6]:port``) parts, comma-separated."""
    hosts = []
    for part in netloc_hosts.split(","):
        part = part.strip()
        if part.startswith("["):
            host, _, tail = part[1:].partition("]")
            port = tail.removeprefix(":") if tail.startswith(":") or not tail else "-"
        else:
            host, _, port = part.partition(":")
        if not host:
            raise ValueError(f"empty host in {shown}")
        if port and not port.isdigit():
            raise ValueError(f"bad port {port!r} in {shown}")
        number = int(port) if port else default_port
        if not 0 < number < 65536:
            raise ValueError(f"port {number} out of range in {shown}")
        hosts.append((host, number))
    return tuple(hosts)


def parse_redis_url(url: str) -> RedisTarget:
    """The target ``url`` names; ValueError (the URL redacted) when it is not one."""
    scheme, sep, rest = url.partition("://")
    shown = redact_url(url)
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"need a {', '.join(s + '://' for s in SCHEMES)} URL, not {shown}")
    if scheme in SINGLE_SCHEMES:
        return RedisTarget(RedisMode.SINGLE, url)
    mode = RedisMode.CLUSTER if scheme in CLUSTER_SCHEMES else RedisMode.SENTINEL
    parts = urlsplit(f"redis://{rest}")
    userinfo, _, netloc_hosts = parts.netloc.rpartition("@")
    if not netloc_hosts:
        raise ValueError(f"no host in {shown}")
    hosts = _hosts(netloc_hosts, _DEFAULT_PORT[mode], shown)
    path = [unquote(p) for p in parts.path.split("/") if p]
    master: str | None = None
    db = "0"
    if mode is RedisMode.SENTINEL:
        if not path:
            raise ValueError(f"no master name in {shown}: need .../<master-name>[/db]")
        master, db = path[0], (path[1] if len(path) > 1 else "0")
        if len(path) > 2:
            raise ValueError(f"too many path parts in {shown}: need .../<master-name>[/db]")
    elif path:
        db = path[0]
        if path != ["0"]:
            raise ValueError(f"a Redis Cluster has database 0 only, not /{'/'.join(path)}")
    if not db.isdigit():
        raise ValueError(f"bad database {db!r} in {shown}")
    node_scheme = "rediss" if scheme.startswith("rediss") else "redis"
    auth = f"{userinfo}@" if userinfo else ""
    host, port = hosts[0]
    host = f"[{host}]" if ":" in host else host
    query = f"?{parts.query}" if parts.query else ""
    node_url = f"{node_scheme}://{auth}{host}:{port}/{db}{query}"
    return RedisTarget(mode, node_url, hosts, master)
