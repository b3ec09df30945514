"""The replay exchange: recorded real market data served over the Binance spot protocol.

Tests, the demo and the benchmarks run the streamer against it instead of a real exchange.
"""

from streamer.replay.data import Kline, Source, TradeRow, load_source
from streamer.replay.server import Faults, ReplayServer, SentStats

__all__ = ["Faults", "Kline", "ReplayServer", "SentStats", "Source", "TradeRow", "load_source"]
