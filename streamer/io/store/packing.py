"""hiredis command packing for the store's connections: the one override of a redis-py method.

redis-py's asyncio ``Connection.pack_command(*args) -> list[bytes]`` turns a command into the
bytes it sends; with hiredis installed it still encodes each argument in Python first. A
1,000-symbol write round has ~3,000 arguments: 1.5 ms to pack that way, 0.3 ms when hiredis
gets them whole; bench/bench_redis_write.py's median round is 7-8 ms without the override and
about 6 ms with it.

The override relies on two things redis-py does today: every command it sends, alone or in a
pipeline, is packed by ``pack_command``, called with the command's words and arguments; and
what that returns is sent as is. tests/unit/test_store_memory.py checks both, and fails naming
this module if a redis-py release changes either: then fix or drop the override (dropping it only
costs speed).
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.sentinel import SentinelManagedConnection


class _HiredisPacking:
    """Packs commands with hiredis (C) instead of the asyncio client's per-argument encoding."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # "CONFIG GET" and the like go as separate words
            args = (*args[0].encode().split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise redis_errors.DataError(str(exc)) from None


class PackedConnection(_HiredisPacking, Connection):
    pass


class PackedSSLConnection(_HiredisPacking, SSLConnection):
    pass


class PackedSentinelConnection(_HiredisPacking, SentinelManagedConnection):
    """A connection to the primary Sentinel names, packing like the others."""


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: PackedConnection,
    SSLConnection: PackedSSLConnection,
    SentinelManagedConnection: PackedSentinelConnection,
}


def packed(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """The hiredis-packing variant of ``connection_class``; a class we do not know (a Unix
    socket connection) is returned as it is. (A Redis Cluster client makes its connections
    itself, with redis-py's own packing.)"""
    return _PACKED.get(connection_class, connection_class)
