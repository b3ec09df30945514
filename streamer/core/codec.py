"""The Redis bar format of DESIGN.md section 3.3, in code.

A closed bar is stored as the compact JSON array ``[open_time_ms, open, high, low, close, volume,
trades]`` in the list ``tickcast:bars:{exchange}:{symbol}``. Floats are written in their
shortest round-trip form, so decoding gives back exactly the floats that were encoded.

Completeness is deliberately not part of the array: 3.3 is a fixed contract that outside readers
rely on. The store keeps the open times of incomplete bars (minutes that overlapped a feed
outage, waiting for backfill) in a separate set, ``tickcast:incomplete:{exchange}:{symbol}``
(see ``incomplete_key``); ``decode_bar`` therefore returns ``complete=True`` unless told
otherwise.
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


def bars_key(exchange: str, symbol: str) -> str:
    """Redis list of a symbol's closed bars, oldest first."""
    return f"{BARS_KEY_PREFIX}{exchange}:{symbol}"


def incomplete_key(exchange: str, symbol: str) -> str:
    """Redis set of the open times of a symbol's stored bars that are still incomplete."""
    return f"{INCOMPLETE_KEY_PREFIX}{exchange}:{symbol}"


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
