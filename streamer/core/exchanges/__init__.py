"""Exchange protocol modules, looked up by name."""

from __future__ import annotations

from streamer.core.exchanges.base import ConnectionPlan, Exchange, FrameError, RestRequest

__all__ = ["ConnectionPlan", "Exchange", "FrameError", "RestRequest", "get_exchange", "names"]


def _registry() -> dict[str, Exchange]:
    from streamer.core.exchanges.binance import BINANCE
    from streamer.core.exchanges.bitstamp import BITSTAMP
    from streamer.core.exchanges.bybit import BYBIT
    from streamer.core.exchanges.coinbase import COINBASE
    from streamer.core.exchanges.kraken import KRAKEN
    from streamer.core.exchanges.okx import OKX

    return {x.name: x for x in (BINANCE, COINBASE, KRAKEN, OKX, BYBIT, BITSTAMP)}


def names() -> list[str]:
    return sorted(_registry())


def get_exchange(name: str) -> Exchange:
    registry = _registry()
    try:
        return registry[name]
    except KeyError:
        raise KeyError(f"unknown exchange {name!r}; known: {', '.join(sorted(registry))}") from None
