"""What a venue enforces on its clients, decided without sockets: the message rate of a
connection and the request weight per minute of an IP."""

from __future__ import annotations

from collections import deque


class MessageRate:
    """A limit on the messages a client sends on one connection, pings and pongs included:
    more than ``limit`` within any ``per_s`` seconds breaks it (Binance: 5 a second, and the
    connection is closed with 1008)."""

    def __init__(self, limit: int, per_s: float = 1.0) -> None:
        self.limit = limit
        self.per_s = per_s
        self._times: deque[float] = deque()

    def record(self, now_s: float) -> bool:
        """Count one message at ``now_s``; True when that breaks the limit."""
        times = self._times
        times.append(now_s)
        while times and times[0] <= now_s - self.per_s:
            times.popleft()
        return len(times) > self.limit


class WeightPerMinute:
    """Request weight used per wall-clock minute (Binance: 6000 per IP), as the venue counts it
    and reports it back in every answer."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used: dict[int, int] = {}

    def spend(self, cost: int, epoch_s: float) -> tuple[bool, int]:
        """Spend ``cost`` at ``epoch_s``: (allowed, weight used this minute after it). A
        request over the limit is refused and spends nothing."""
        minute = int(epoch_s // 60)
        used = self.used.get(minute, 0)
        if used + cost > self.limit:
            return False, used
        self.used = {minute: used + cost}  # earlier minutes no longer matter
        return True, used + cost
