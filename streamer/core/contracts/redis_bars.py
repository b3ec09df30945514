"""The Redis bar format of docs/contracts.md, in code.

A closed bar is stored as the compact JSON array ``[open_time_ms, open, high, low, close, volume,
trades]`` in the list ``tickcast:bars:{exchange}:{symbol}``. Floats are written in their
shortest round-trip form, so decoding gives back exactly the floats that were encoded.

Completeness is deliberately not part of the array: 3.3 is a fixed contract that outside readers
rely on. The store keeps the open times of incomplete bars (minutes that overlapped a feed
outage, waiting for backfill) in a separate set, ``tickcast:incomplete:{exchange}:{symbol}``
(see ``incomplete_key``); ``decode_bar`` therefore returns ``complete=True`` unless told
otherwise.

In a Redis Cluster a script call may only touch keys of one hash slot, and the two keys of a
window hash to different slots (the braces of ``{exchange}`` above are a placeholder, not part
of the key). There the keys are laid out with the window as a hash tag,
``tickcast:bars:{binance:BTCUSDT}`` and ``tickcast:incomplete:{binance:BTCUSDT}``, so that both
keys of a window share a slot (``cluster=True``). A single server keeps the plain keys.
"""

from __future__ import annotations

import math

import msgspec

from streamer.core.types import MINUTE_MS, Bar

BARS_KEY_PREFIX = "tickcast:bars:"
INCOMPLETE_KEY_PREFIX = "tickcast:incomplete:"

_BarArray = tuple[int, float, float, float, float, float, int]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_BarArray)


def bars_key(exchange: str, symbol: str, cluster: bool = False) -> str:
    """Redis list of a symbol's closed bars, oldest first (the cluster layout with a hash tag)."""
    if cluster:
        return f"{BARS_KEY_PREFIX}{{{exchange}:{symbol}}}"
    return f"{BARS_KEY_PREFIX}{exchange}:{symbol}"


def incomplete_key(exchange: str, symbol: str, cluster: bool = False) -> str:
    """Redis set of the open times of a symbol's stored bars that are still incomplete."""
    if cluster:
        return f"{INCOMPLETE_KEY_PREFIX}{{{exchange}:{symbol}}}"
    return f"{INCOMPLETE_KEY_PREFIX}{exchange}:{symbol}"


def window_of_bars_key(key: str, cluster: bool = False) -> tuple[str, str] | None:
    """(exchange, symbol) of a ``bars_key`` of that layout; None for any other key."""
    if not key.startswith(BARS_KEY_PREFIX):
        return None
    name = key.removeprefix(BARS_KEY_PREFIX)
    if cluster:
        if not (name.startswith("{") and name.endswith("}")):
            return None
        name = name[1:-1]
    parts = name.split(":")
    return (parts[0], parts[1]) if len(parts) == 2 else None


def encode_bar(bar: Bar) -> bytes:
    """``[open_time_ms, open, high, low, close, volume, trades]`` as compact JSON."""
    return _encoder.encode(
        (bar.open_time_ms, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades)
    )


def decode_bar(exchange: str, symbol: str, raw: bytes | str, complete: bool = True) -> Bar:
    """Parse one stored bar; raises ``ValueError`` for anything that is not a sane bar.

    Beyond the shape, the values are checked (finite, minute-aligned, low <= open/close <= high,
    volume and trades >= 0) so that a corrupt entry is dropped at the door instead of reaching
    the model as a price.
    """
    try:
        open_time_ms, open_, high, low, close, volume, trades = _decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        raise ValueError(f"malformed bar {raw!r}: {exc}") from None
    if not all(map(math.isfinite, (open_, high, low, close, volume))):
        raise ValueError(f"bar with a non-finite value: {raw!r}")
    if open_time_ms % MINUTE_MS:
        raise ValueError(f"bar open time is not a minute start: {raw!r}")
    if not low <= min(open_, close) or not max(open_, close) <= high:
        raise ValueError(f"bar prices out of order (need low <= open, close <= high): {raw!r}")
    if volume < 0 or trades < 0:
        raise ValueError(f"bar with negative volume or trade count: {raw!r}")
    return Bar(exchange, symbol, open_time_ms, open_, high, low, close, volume, trades, complete)
