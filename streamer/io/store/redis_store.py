"""Bar windows in Redis: one script call per round (keys in the ``streamer.io.store`` docstring).

On one server (or the primary Sentinel names) a round is one EVALSHA carrying every window. A
Redis Cluster refuses a script whose keys lie in several hash slots, so there the windows use
the hash-tagged key layout (both keys of a window in one slot), a round is one EVALSHA per slot
that has windows, and all of them go in one cluster pipeline: redis-py sends each node its
calls in one batch, all nodes at once, so a round is still one network round trip per node. A
retried round is as idempotent as on one server: the scripts are the same.

redis-py's errors become the store's two kinds here, at the one place the store calls out:
``StoreUnavailable`` (a ``Transient``: the server is down, loading, a read-only replica
mid-failover, out of memory, or the cluster is failing over) and ``StoreRejected`` (a
``Permanent``: any other refusal).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.crc import key_slot

from streamer.core.contracts.redis_bars import bars_key, decode_bar, encode_bar, incomplete_key
from streamer.core.redact import redact_url
from streamer.core.redis_url import RedisMode, parse_redis_url
from streamer.core.types import Bar
from streamer.io.redis_clients import async_client
from streamer.io.store.base import (
    DEFAULT_CAP,
    StoreError,
    StoreRejected,
    StoreUnavailable,
    by_window,
    check_cap,
)
from streamer.io.store.packing import packed
from streamer.io.store.script import APPEND, REPAIR, Script

log = logging.getLogger(__name__)

# Errors after which the same round may succeed later: the server is down, loading, a read-only
# replica mid-failover, or out of memory; in a cluster also a failover under way (CLUSTERDOWN,
# TRYAGAIN, a slot no node serves) and every client-side cluster error, which are about the
# topology (no node reachable, nodes that disagree on the slots) once each call's keys share a
# slot, as ``_slot_calls`` makes sure.
_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    redis_errors.ClusterError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.RedisClusterException,
    OSError,
)
_ERRORS = (redis_errors.RedisError, redis_errors.RedisClusterException, OSError)


def _store_error(name: str, exc: Exception) -> StoreError:
    """``exc`` from redis-py as the store's error, named by the (redacted) store ``name``."""
    message = f"{name}: {type(exc).__name__}: {exc}"
    return StoreUnavailable(message) if isinstance(exc, _UNAVAILABLE) else StoreRejected(message)


def _call_args(
    windows: Iterable[tuple[tuple[str, str], list[Bar]]], cap: int, cluster: bool
) -> tuple[list[str], list[int | bytes]]:
    """KEYS and ARGV of one script call over ``windows`` (the layout in ``script``)."""
    keys: list[str] = []
    args: list[int | bytes] = [cap]
    for (exchange, symbol), window in windows:
        keys += (bars_key(exchange, symbol, cluster), incomplete_key(exchange, symbol, cluster))
        if len(window) == 1 and window[0].complete:
            args.append(encode_bar(window[0]))
        else:
            args.append(
                b"\n".join(
                    encode_bar(bar) if bar.complete else b"!" + encode_bar(bar) for bar in window
                )
            )
    return keys, args


def _slot_calls(
    windows: dict[tuple[str, str], list[Bar]], cap: int
) -> list[tuple[list[str], list[int | bytes]]]:
    """One script call per cluster hash slot: the windows whose (hash-tagged) keys lie in it."""
    slots: dict[int, list[tuple[tuple[str, str], list[Bar]]]] = {}
    for window in windows.items():
        exchange, symbol = window[0]
        slots.setdefault(key_slot(bars_key(exchange, symbol, True).encode()), []).append(window)
    return [_call_args(group, cap, True) for group in slots.values()]


def _decode_window(
    exchange: str, symbol: str, raws: Sequence[bytes], incomplete: set[int], key: str
) -> list[Bar]:
    """Decode a stored window; corrupt entries are skipped (one warning per load, with a sample)."""
    bars: list[Bar] = []
    bad: list[str] = []
    for raw in raws:
        try:
            bar = decode_bar(exchange, symbol, raw)
        except ValueError as exc:
            bad.append(str(exc)[:200])
            continue
        if bar.open_time_ms in incomplete:
            bar = msgspec.structs.replace(bar, complete=False)
        bars.append(bar)
    if bad:
        log.warning(
            "skipped %d undecodable bars in %s, e.g. %s",
            len(bad),
            key,
            bad[0],
        )
    return bars


class RedisBarStore:
    """Bar windows in Redis (keys in the package docstring); one script call per round, or per
    hash slot on a cluster (``cluster``: the client is a ``RedisCluster``)."""

    def __init__(
        self, client: Redis | RedisCluster, *, cap: int = DEFAULT_CAP, name: str = "redis"
    ) -> None:
        self._client = client
        self.cluster = isinstance(client, RedisCluster)
        self.cap = check_cap(cap)
        self.name = name  # already redacted; used in every message

    @classmethod
    def from_url(
        cls,
        url: str,
        cap: int = DEFAULT_CAP,
        socket_timeout: float = 5.0,
        password: str | None = None,
    ) -> RedisBarStore:
        """A store on ``redis://`` or ``rediss://`` (TLS) ``url``; credentials may be in the URL.

        TLS options go in the query, e.g. ``rediss://:pw@host:6380/0?ssl_ca_certs=/etc/ca.pem``.
        ``redis+cluster://`` and ``redis+sentinel://`` URLs (``streamer.core.redis_url``) name
        a Redis Cluster and a Sentinel-watched primary. ``password`` (read from a secret file,
        so that it appears in no URL, environment or process listing) wins over one in the URL.
        The client retries a command once at once (a pooled connection that died with a server
        restart; on a cluster after a topology refresh); waiting between attempts is the
        BufferedBarWriter's job.
        """
        target = parse_redis_url(url)
        if target.mode is not RedisMode.SINGLE:
            node = SSLConnection if target.node_url.startswith("rediss:") else Connection
            client = async_client(
                target,
                socket_timeout=socket_timeout,
                password=password,
                retry=Retry(NoBackoff(), 1),
                connection_class=packed(node if target.cluster else SentinelManagedConnection),
            )
            return cls(client, cap=cap, name=redact_url(url))
        try:
            options: dict[str, Any] = {
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": socket_timeout,
                "retry": Retry(NoBackoff(), 1),
                **parse_url(url),  # the URL's own options win, as in Redis.from_url
            }
        except (ValueError, TypeError) as exc:
            raise ValueError(f"bad Redis URL {redact_url(url)}: {exc}") from None
        if password is not None:
            options["password"] = password
        options["connection_class"] = packed(options.get("connection_class", Connection))
        client = Redis.from_pool(ConnectionPool(**options))
        return cls(client, cap=cap, name=redact_url(url))

    async def write(self, bars: Sequence[Bar]) -> None:
        if bars:
            await self._run(APPEND, by_window(bars))

    async def repair(self, bars: Sequence[Bar]) -> None:
        if bars:
            await self._run(REPAIR, by_window(bars))

    async def load(self, exchange: str, symbol: str, count: int) -> list[Bar]:
        if count <= 0:
            return []
        key = bars_key(exchange, symbol, self.cluster)
        try:
            async with self._client.pipeline(transaction=False) as pipe:  # one slot on a cluster
                pipe.lrange(key, -count, -1)
                pipe.zrange(incomplete_key(exchange, symbol, self.cluster), 0, -1)
                raws, marks = await pipe.execute()
        except _ERRORS as exc:
            raise _store_error(self.name, exc) from exc
        return _decode_window(exchange, symbol, raws, {int(m) for m in marks}, key)

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except _ERRORS:
            return False

    async def close(self) -> None:
        await self._client.aclose()

    async def _run(self, script: Script, windows: dict[tuple[str, str], list[Bar]]) -> Any:
        if self.cluster:
            return await self._run_per_slot(script, windows)
        keys, args = _call_args(windows.items(), self.cap, False)
        try:
            try:
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                # Script cache empty (new or restarted server): EVAL also caches it.
                return await self._client.eval(script.source, len(keys), *keys, *args)
        except _ERRORS as exc:
            raise _store_error(self.name, exc) from exc

    async def _run_per_slot(self, script: Script, windows: dict[tuple[str, str], list[Bar]]) -> int:
        """The round as one call per hash slot, in one pipeline; a node whose script cache is
        empty (new, restarted, a promoted replica) gets EVAL in a second pipeline."""
        calls = _slot_calls(windows, self.cap)
        done = 0
        try:
            for command, body in (("EVALSHA", script.sha), ("EVAL", script.source)):
                async with self._client.pipeline(transaction=False) as pipe:
                    for keys, args in calls:
                        pipe.execute_command(command, body, len(keys), *keys, *args)
                    results = await pipe.execute(raise_on_error=False)
                refused = [
                    r
                    for r in results
                    if isinstance(r, Exception) and not isinstance(r, redis_errors.NoScriptError)
                ]
                if refused:  # the round is retried whole if any node may take it later
                    refused.sort(key=lambda e: not isinstance(e, _UNAVAILABLE))
                    raise refused[0]
                done += sum(r for r in results if isinstance(r, int))
                calls = [c for c, r in zip(calls, results, strict=True) if isinstance(r, Exception)]
                if not calls:
                    break
        except _ERRORS as exc:
            raise _store_error(self.name, exc) from exc
        return done
