"""Rolling windows of closed 1-minute bars, in Redis or in memory, and the daemon's buffered writer.

Redis keys (docs/contracts.md; ``{symbol}`` is the canonical symbol, e.g. ``BTCUSDT``):

``tickcast:bars:{exchange}:{symbol}`` (list)
    Closed bars, oldest first, each a compact JSON array
    ``[open_time_ms, open, high, low, close, volume, trades]``; open times strictly increase.
    Capped to the newest 1440 bars (one day; configurable) with LTRIM.
``tickcast:incomplete:{exchange}:{symbol}`` (sorted set)
    Open times (member and score, in ms) of the bars in that list that overlapped a feed outage
    and wait for a backfilled replacement. Backfill removes them; marks of bars that fell off the
    capped list are pruned whenever marks are added or removed, so the set never outgrows the
    list.

On a Redis Cluster (``redis+cluster://``) the same keys carry the window as a hash tag,
``tickcast:bars:{binance:BTCUSDT}`` and ``tickcast:incomplete:{binance:BTCUSDT}``, so that both
keys of a window lie in one hash slot.

Every write round is one EVALSHA of a Lua script carrying all symbols, so a minute close costs
one round trip however many symbols close; on a cluster, one EVALSHA per hash slot, all in one
pipeline: one round trip per node. The script appends only bars newer than a list's last
bar, so a round retried after a connection error (applied or not) never duplicates a bar; older
bars go through ``repair``, which merges them in place.

Modules: ``base`` (the ``BarStore`` protocol and its errors), ``redis_store`` and ``memory`` (the
two stores), ``script`` (the Lua), ``packing`` (hiredis command packing for redis-py), ``writer``
(the asyncio shell around ``streamer.core.write_buffer``).
"""

from __future__ import annotations

from streamer.core.redact import redact_url
from streamer.io.store.base import (
    DEFAULT_CAP,
    BarStore,
    StoreError,
    StoreRejected,
    StoreUnavailable,
)
from streamer.io.store.memory import MemoryBarStore
from streamer.io.store.redis_store import RedisBarStore
from streamer.io.store.writer import BufferedBarWriter

__all__ = [
    "DEFAULT_CAP",
    "BarStore",
    "BufferedBarWriter",
    "MemoryBarStore",
    "RedisBarStore",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "redact_url",  # its old home: streamer.cli imports it from here
]
