"""redis-py clients for the multi-host Redis URLs of ``streamer.core.redis_url``.

A ``redis+cluster://`` URL gets a ``RedisCluster`` with the hosts as startup nodes; a
``redis+sentinel://`` URL gets the ``Redis`` client that Sentinel's ``master_for`` makes, whose
connections ask the sentinels for the primary each time they connect, so a reconnect after a
failover reaches the promoted replica. One-server URLs are not handled here: each caller keeps
its own ``Redis.from_url`` (the bar store its hiredis-packing pool).

Asyncio clients for the streamer, blocking ones for the trainer; the options are the same.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry

from streamer.core.redact import redact_url
from streamer.core.redis_url import RedisMode, RedisTarget

AsyncClient = aioredis.Redis | aioredis.RedisCluster
SyncClient = redis.Redis | redis.RedisCluster


def _node_options(
    target: RedisTarget, socket_timeout: float | None, password: str | None
) -> dict[str, Any]:
    """Connection options of every data node: the timeouts, then what the URL says."""
    if target.mode is RedisMode.SINGLE:
        raise ValueError("a one-server URL: use Redis.from_url")
    options: dict[str, Any] = {}
    if socket_timeout is not None:
        options["socket_timeout"] = socket_timeout
        options["socket_connect_timeout"] = socket_timeout
    try:
        options.update(parse_url(target.node_url))  # the URL's own options win
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad Redis URL {redact_url(target.node_url)}: {exc}") from None
    del options["host"], options["port"]
    if password is not None:
        options["password"] = password
    tls = options.pop("connection_class", None) is SSLConnection
    if target.mode is RedisMode.CLUSTER:
        del options["db"]  # always 0 (checked by the parser)
        if tls:
            options["ssl"] = True
    elif tls:
        raise ValueError("Sentinel URLs are redis+sentinel:// (no TLS)")
    return options


def _sentinel_options(socket_timeout: float | None) -> dict[str, Any]:
    if socket_timeout is None:
        return {}
    return {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout}


def async_client(
    target: RedisTarget,
    *,
    socket_timeout: float | None = 5.0,
    password: str | None = None,
    retry: Retry | None = None,
    connection_class: type[Any] | None = None,
) -> AsyncClient:
    """An asyncio client for a cluster or Sentinel ``target``; connects on first use.

    ``retry``: the client's own retries (for a cluster: of a command or pipeline, each after a
    topology refresh). ``connection_class``: for a cluster, a ``Connection`` subclass (an
    ``SSLConnection`` one with TLS), for Sentinel a ``SentinelManagedConnection`` subclass.
    """
    options = _node_options(target, socket_timeout, password)
    if retry is not None:
        options["retry"] = retry
    try:
        if target.mode is RedisMode.CLUSTER:
            nodes = [aioredis.cluster.ClusterNode(host, port) for host, port in target.hosts]
            cluster = aioredis.RedisCluster(startup_nodes=nodes, **options)
            if connection_class is not None:
                # RedisCluster takes no connection class: every node it creates gets the one
                # in its connection_kwargs, and the startup nodes exist already
                cluster.connection_kwargs["connection_class"] = connection_class
                for node in cluster.nodes_manager.startup_nodes.values():
                    node.connection_class = connection_class
            return cluster
        if connection_class is not None:
            options["connection_class"] = connection_class
        sentinel = aioredis.sentinel.Sentinel(
            list(target.hosts), sentinel_kwargs=_sentinel_options(socket_timeout)
        )
        assert target.master is not None
        primary: aioredis.Redis = sentinel.master_for(target.master, **options)
        return primary
    except TypeError as exc:  # an option the client does not take
        raise ValueError(f"bad Redis URL {redact_url(target.node_url)}: {exc}") from None


def sync_client(target: RedisTarget, *, socket_timeout: float | None = None) -> SyncClient:
    """The blocking twin of ``async_client`` (the trainer's, with redis-py's default retries).
    Unlike the asyncio one, a blocking cluster client reads the slot map when it is made."""
    options = _node_options(target, socket_timeout, None)
    try:
        if target.mode is RedisMode.CLUSTER:
            nodes = [
                redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in target.hosts
            ]
            return redis.RedisCluster(startup_nodes=nodes, **options)
        sentinel = redis.sentinel.Sentinel(
            list(target.hosts), sentinel_kwargs=_sentinel_options(socket_timeout)
        )
        assert target.master is not None
        primary: redis.Redis = sentinel.master_for(target.master, **options)
        return primary
    except TypeError as exc:
        raise ValueError(f"bad Redis URL {redact_url(target.node_url)}: {exc}") from None
