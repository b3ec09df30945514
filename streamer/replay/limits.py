"""What a venue enforces on its clients, decided without sockets: the rules a dialect declares
(``VenueRules``), the message rate of a connection, the request weight per minute of an IP and
the requests within a sliding window (REST requests, WebSocket connection requests)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestLimit:
    """At most ``limit`` requests within any ``per_s`` seconds, per IP, to ``paths`` (empty:
    every path). One over it is answered ``status``; with ``ban_s``, so is every request for
    that long after (Bybit: 403 for 10 minutes)."""

    limit: int
    per_s: float
    paths: frozenset[str] = frozenset()
    status: int = 429
    ban_s: float = 0.0


@dataclass(frozen=True, slots=True)
class VenueRules:
    """What a venue enforces on its clients, which the replay server and its REST endpoint
    enforce too; None: not enforced."""

    # messages a client may send a second on one connection, pings and pongs included; more
    # and the connection is closed with 1008 (Binance: 5)
    max_client_messages_per_s: int | None = None
    # connections are cut at this age (Binance: 24 h)
    max_connection_age_s: float | None = None
    # a connection whose client sent nothing for so long is closed with ``idle_close`` (OKX)
    client_idle_timeout_s: float | None = None
    idle_close: tuple[int, str] = (1000, "idle")
    # the request weight of each REST path (others: 1), the limit per minute and IP, and the
    # header of every answer that reports the weight used this minute (Binance)
    request_weights: Mapping[str, int] | None = None
    weight_limit_per_minute: int | None = None
    weight_header: str = "X-Used-Weight"
    # REST requests per IP within a sliding window (OKX: 20 history-candles per 2 s)
    request_limits: tuple[RequestLimit, ...] = ()
    # WebSocket connection requests per IP within a sliding window, the rest answered 429 at
    # the handshake (OKX: 3 a second)
    connection_limit: RequestLimit | None = None


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
    and reports it back in every answer. ``wall_s``: epoch seconds now (tests shift it to the
    end of a minute, so waiting one out takes a second, not up to sixty)."""

    def __init__(self, limit: int, wall_s: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.wall_s = wall_s
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


class RequestRate:
    """One ``RequestLimit`` as the venue counts it: a request that would make more than the
    limit within the window is refused and not counted."""

    def __init__(self, rule: RequestLimit) -> None:
        self.rule = rule
        self.banned_until = 0.0
        self._times: deque[float] = deque()

    def admit(self, now_s: float) -> bool:
        """Count one request at ``now_s`` (monotonic seconds); False: refused."""
        if now_s < self.banned_until:
            return False
        times = self._times
        while times and times[0] <= now_s - self.rule.per_s:
            times.popleft()
        if len(times) >= self.rule.limit:
            self.banned_until = now_s + self.rule.ban_s
            return False
        times.append(now_s)
        return True
