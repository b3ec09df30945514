"""The replay exchange: recorded real market data served over a venue's protocol (Binance spot,
Coinbase Exchange, Kraken spot v2, OKX, Bybit v5 spot, Bitstamp; one venue per server), enforcing
what the venue enforces (message rates, connection age, request weight, request and connection
rates, keepalives).

Tests, the demo and the benchmarks run the streamer against it instead of a real exchange.
"""

from streamer.replay.data import Kline, Source, TradeRow, load_source
from streamer.replay.faults import Faults, SentStats
from streamer.replay.rest import RestLogEntry
from streamer.replay.server import DIALECTS, ReplayServer

__all__ = [
    "DIALECTS",
    "Faults",
    "Kline",
    "ReplayServer",
    "RestLogEntry",
    "SentStats",
    "Source",
    "TradeRow",
    "load_source",
]
