"""What every exchange module provides: pure protocol knowledge, no sockets.

The I/O shells (``streamer.io.feed``, ``streamer.io.backfill``) only shuttle bytes; everything
an exchange's wire format decides lives behind this interface and is tested without a network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from streamer.core.rest_limits import RestWeight
from streamer.core.types import Bar, Trade


class FrameError(ValueError):
    """A frame that cannot be used. ``reason`` is a short, bounded label for metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Reconnect:
    """The exchange says this connection will end soon (Binance ``serverShutdown``): the feed
    opens a new one at once and lets this one go when the new one delivers."""

    reason: str


@dataclass(frozen=True, slots=True)
class TradeIdMark:
    """The venue's newest trade id of ``symbol`` at ``ts_ms`` (a Coinbase heartbeat's
    ``last_trade_id``): a feed whose newest id is older missed trades."""

    symbol: str
    last_trade_id: int
    ts_ms: int


@dataclass(frozen=True, slots=True)
class RestRequest:
    """One REST page to fetch: ``GET {base_url}{path}?{params}``."""

    path: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """One WebSocket connection: where to connect and what to send once connected."""

    url: str
    symbols: tuple[str, ...]
    subscribe: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VenueRules:
    """What a venue does beyond the common protocol, read by the I/O shells; the defaults are
    those of a venue that does none of it."""

    # the venue's request-weight scheme, which every backfill task of the process shares
    # (Binance)
    rest_weight: RestWeight | None = None
    # each symbol's trade ids count up by one, so a jump means missed trades (Coinbase, Kraken)
    sequential_trade_ids: bool = False
    # REST bars leave out minutes without trades: the backfill fills them in as flat bars
    # (Coinbase)
    omits_quiet_minutes: bool = False
    # how far back REST bars reach; older minutes come from the venue's trades (Kraken: 720)
    bars_depth_minutes: int | None = None
    # the venue's limit on messages a client sends per second and connection, pings and pongs
    # included (Binance: 5)
    max_client_messages_per_s: int | None = None
    # an application-level ping the feed sends every ``keepalive_interval_s`` (OKX, Bybit,
    # Bitstamp); None sends none
    keepalive_message: str | None = None
    keepalive_interval_s: float = 20.0


class Exchange(Protocol):
    """Protocol knowledge of one exchange. Implementations are stateless and thread-safe."""

    name: str
    default_ws_url: str
    default_rest_url: str
    # streams per WebSocket connection before the feed opens another one
    max_streams_per_connection: int
    # reconnect before the exchange cuts the connection (Binance: 24 h); None = no limit
    max_connection_age_s: float | None
    # new connection attempts allowed per second (exchange limit, enforced by the feed)
    connect_attempts_per_s: float
    # bars per REST page and minimum spacing between REST requests
    max_bars_per_request: int
    min_request_interval_s: float
    # what the venue does beyond this protocol (keepalive pings, trade id continuity, ...)
    rules: VenueRules

    def connections(
        self, ws_url: str, symbols: list[str], channels: list[str]
    ) -> list[ConnectionPlan]:
        """Split the subscription over as many connections as the per-connection limit needs."""
        ...

    def parse(self, raw: bytes | str) -> Sequence[Trade | Bar | Reconnect | TradeIdMark]:
        """Parse one WebSocket frame.

        Returns trades (and, for kline channels, closed bars; for a shutdown notice, a
        ``Reconnect``; for a heartbeat that names the newest trade id, a ``TradeIdMark``).
        Other heartbeats, acknowledgements and other channels return ``[]``. Malformed or
        invalid frames raise ``FrameError``.
        """
        ...

    def bars_request(self, symbol: str, start_ms: int, end_ms: int) -> RestRequest:
        """The REST page of 1-minute bars opening in ``[start_ms, end_ms)``, first page only."""
        ...

    def parse_bars(self, symbol: str, raw: bytes) -> list[Bar]:
        """Parse a REST bars response into bars sorted by open time."""
        ...
