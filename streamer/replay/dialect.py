"""What a venue's protocol is to the replay exchange: the one seam between venues and the server.

The server owns what every venue shares: the timeline, the replay clock, the faults, the
connections, fan-out, batching and flow control. A ``Dialect`` owns what differs: the stream
names of a symbol and the JSON of its trade and kline events, how a connection's URL and its
control messages (subscribe, unsubscribe, ...) are answered, and the REST pages. Everything here
is pure (text in, text or decisions out), so a dialect is tested without sockets. One module per
venue implements it (``binance.py``, ``coinbase.py``, ``kraken.py``, ``okx.py``, ``bybit.py``,
``bitstamp.py``), most on ``DialectBase``, which holds what they share: no rules, one
framing, malformed copies made from the event's JSON. A venue that sends heartbeats implements
``Heartbeating`` as well. What a venue enforces on its clients is its ``VenueRules``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from streamer.core.timefmt import iso_seconds
from streamer.replay.data import Kline, TradeRow
from streamer.replay.limits import VenueRules
from streamer.replay.routes import RestReply, RestRoute

# (symbol, event) -> the event's JSON text on one stream
TradeEncoder = Callable[[str, TradeRow], str]
KlineEncoder = Callable[[str, Kline], str]


def iso_micros(ts_ms: int) -> str:
    """``2021-04-17T16:43:37.121000Z``: the microsecond times of Coinbase's and Kraken's JSON."""
    return f"{iso_seconds(ts_ms - ts_ms % 1000)[:-1]}.{ts_ms % 1000:03d}000Z"


def dumps(value: Any) -> str:
    """Compact JSON, as the venues send it."""
    return json.dumps(value, separators=(",", ":"))


MALFORMED_VARIANTS = 3  # Dialect.malformed: 0 invalid JSON, 1 wrong field types, 2 NaN price


@dataclass(frozen=True, slots=True)
class Channels:
    """One symbol's streams: each trade goes out on every trade stream, each closed kline on
    every kline stream, as JSON made by the stream's encoder."""

    trades: tuple[tuple[str, TradeEncoder], ...]
    klines: tuple[tuple[str, KlineEncoder], ...]


@dataclass(frozen=True, slots=True)
class Opening:
    """What a connection to a WebSocket URL starts with: its streams, its framing (an index
    into ``Dialect.frames``) and the texts the venue sends first (Kraken's ``status``)."""

    streams: list[str]
    framing: int
    greeting: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ControlOutcome:
    """The answer to one client message: streams to add and remove, the connection's new
    framing (None: unchanged), and the texts to send back after the frames already queued."""

    replies: list[str]
    subscribe: list[str] = field(default_factory=list)
    unsubscribe: list[str] = field(default_factory=list)
    framing: int | None = None


class Dialect(Protocol):
    """A venue's WebSocket and REST protocol, as the replay server serves it."""

    @property
    def rest_routes(self) -> Mapping[str, RestRoute]: ...

    @property
    def rules(self) -> VenueRules: ...

    def shutdown_notice(self, now_ms: int) -> str | None:
        """What the venue sends before it goes away (Binance ``serverShutdown``); None: it
        sends nothing."""
        ...

    def channels(self, symbol: str) -> Channels: ...

    def frames(self, stream: str, event: str) -> tuple[str, ...]:
        """The texts of ``event`` on ``stream``, one per framing a connection may use."""
        ...

    def malformed(self, event: str, variant: int) -> str:
        """A broken copy of ``event``; ``variant`` in range(MALFORMED_VARIANTS)."""
        ...

    def open(self, path: str, query: str) -> Opening | None:
        """The connection a WebSocket URL asks for; None: no such endpoint (404)."""
        ...

    def control(self, message: str | bytes, streams: Set[str], framing: int) -> ControlOutcome:
        """Answer a client message, given the connection's streams and framing now."""
        ...

    def rest_not_found(self, path: str) -> RestReply: ...

    def rest_throttled(self, status: int) -> RestReply:
        """The body of a 429 or 418 answer (the server adds Retry-After)."""
        ...


class DialectBase:
    """What most dialects share: no rules, one WebSocket path, no greeting, no shutdown notice,
    one framing (each event is sent as it is) and malformed copies made from the event's JSON
    (``spoil``)."""

    rules = VenueRules()
    ws_path = ""  # the one WebSocket path served ("": the root), with or without a final "/"

    def open(self, path: str, query: str) -> Opening | None:
        """A connection to ``ws_path``: no streams until the client subscribes, the one
        framing, and the venue's ``greeting``."""
        if path not in (self.ws_path, self.ws_path + "/"):
            return None
        return Opening([], 0, self.greeting())

    def greeting(self) -> tuple[str, ...]:
        """What the venue sends a new connection first."""
        return ()

    def shutdown_notice(self, now_ms: int) -> str | None:
        return None

    def frames(self, stream: str, event: str) -> tuple[str, ...]:
        return (event,)

    def malformed(self, event: str, variant: int) -> str:
        """0 the first half of the event (invalid JSON), 1 and 2 the event ``spoil`` made."""
        if variant == 0:
            return event[: len(event) // 2]
        parsed: dict[str, Any] = json.loads(event)
        self.spoil(parsed, variant)
        return dumps(parsed)

    def spoil(self, event: dict[str, Any], variant: int) -> None:
        """Break the parsed ``event`` in place: 1 wrong field types, 2 a bad price; its ids
        stay the real event's, so a client that remembers an id before validating loses the
        good frame."""
        raise NotImplementedError


def spoil_trade(
    trade: dict[str, Any], variant: int, wrong_types: dict[str, Any], price: str
) -> None:
    """``DialectBase.spoil`` of a trade whose price is text: 1 ``wrong_types`` written over its
    fields, 2 its ``price`` negative."""
    if variant == 1:
        trade.update(wrong_types)
    else:
        trade[price] = "-" + trade[price]


@runtime_checkable
class Heartbeating(Protocol):
    """A venue that sends heartbeats: every ``heartbeat_every_ms`` of replay time the server asks
    each open connection's (not stalled) heartbeat frames."""

    heartbeat_every_ms: int

    def heartbeats(
        self, streams: Set[str], now_ms: int, quiet_ms: int, last_trade_ids: Mapping[str, int]
    ) -> list[str]:
        """The heartbeats due on a connection with ``streams`` at ``now_ms``; ``quiet_ms``: how
        long it has gone without a data frame; ``last_trade_ids``: each symbol's newest trade id
        so far (sent or not)."""
        ...
