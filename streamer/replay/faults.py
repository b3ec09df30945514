"""What the replay exchange does wrong on purpose (``Faults``) and what it sent (``SentStats``).

Both are plain data the server reads and updates as it runs, so a test changes a fault at any
moment and compares what its client got with what was sent, exactly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from streamer.core.types import MINUTE_MS

_EXACT_BITS = 1074  # every float is an integer multiple of 2**-1074


def _exact(value: float) -> int:
    """``value * 2**1074`` as an int: sums of these are exact, and rounding once at the end
    (int true division is correctly rounded) gives what ``math.fsum`` gives."""
    numerator, denominator = value.as_integer_ratio()
    return numerator << (_EXACT_BITS - denominator.bit_length() + 1)


def _from_exact(total: int) -> float:
    return total / (1 << _EXACT_BITS)


@dataclass
class Faults:
    """Fault injection, read by the server as it runs; change fields at any time.

    Message counts compare with ``sent.messages`` (data frames sent since start), so to act in
    100 messages from now set ``server.sent.messages + 100``. Data times are replay-clock ms.
    A one-shot trigger clears itself when it fires.
    """

    # drop every connection (one-shot): at this data time, or once sent.messages reaches this
    drop_at_ms: int | None = None
    drop_after_messages: int | None = None
    # True: close with a close frame (1001 going away); False: abort the TCP connection
    drop_with_close_frame: bool = False
    # after a drop, answer WebSocket upgrades with HTTP 503 for this many seconds
    refuse_after_drop_s: float = 0.0
    # stall (one-shot): the connections open at that moment get no data for stall_s seconds,
    # the socket stays open; what they miss is gone (counted in sent.skipped_stalled)
    stall_at_ms: int | None = None
    stall_after_messages: int | None = None
    stall_s: float = 5.0
    # insert one malformed frame before every Nth data frame, cycling through invalid JSON,
    # wrong field types and a NaN price; the good frames are all still sent
    malformed_every: int | None = None
    # the next rest_429 klines requests answer 429, the rest_418 after them 418 (IP ban), both
    # with Retry-After: retry_after_s
    rest_429: int = 0
    rest_418: int = 0
    retry_after_s: int = 1

    def take_rest_throttle(self) -> int | None:
        """The status a throttled REST request gets now (429, then 418), using one up; None
        when requests pass."""
        if self.rest_429 > 0:
            self.rest_429 -= 1
            return 429
        if self.rest_418 > 0:
            self.rest_418 -= 1
            return 418
        return None


@dataclass
class SentStats:
    """What the server sent. Data frames are counted per frame delivered: a trade sent on two
    streams or to two connections counts twice. Volumes are exact sums (as ``math.fsum``)."""

    messages: int = 0  # data frames: trades, klines
    trades: Counter[str] = field(default_factory=Counter)  # trade frames per symbol (all kinds)
    klines: Counter[str] = field(default_factory=Counter)  # closed-kline frames per symbol
    malformed: int = 0
    skipped_stalled: int = 0  # data frames not sent because their connection was stalled
    connections: int = 0  # WebSocket connections accepted
    drops: int = 0  # connections dropped by a fault
    refused: int = 0  # upgrades answered 503
    rest_requests: int = 0
    rest_throttled: int = 0  # answered 429, 418 or the venue's 403
    _volume: dict[str, int] = field(default_factory=dict)
    _minutes: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def count_trade(self, symbol: str, ts_ms: int, qty: float) -> None:
        exact = _exact(qty)
        self.trades[symbol] += 1
        self._volume[symbol] = self._volume.get(symbol, 0) + exact
        key = (symbol, ts_ms - ts_ms % MINUTE_MS)
        tally = self._minutes.get(key)
        if tally is None:
            self._minutes[key] = [1, exact]
        else:
            tally[0] += 1
            tally[1] += exact

    def volume(self, symbol: str) -> float:
        """Total quantity of the trades sent for ``symbol``, exactly rounded."""
        return _from_exact(self._volume.get(symbol, 0))

    def minutes(self, symbol: str) -> dict[int, tuple[int, float]]:
        """Per minute open time: (trades sent, their exact volume). This is what a client's bar
        for that minute holds if it received every frame once."""
        return {
            minute: (tally[0], _from_exact(tally[1]))
            for (sym, minute), tally in sorted(self._minutes.items())
            if sym == symbol
        }
