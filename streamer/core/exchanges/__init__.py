"""Exchange protocol modules, looked up by name."""

from __future__ import annotations

from streamer.core.exchanges.base import ConnectionPlan, Exchange, FrameError, RestRequest

__all__ = ["ConnectionPlan", "Exchange", "FrameError", "RestRequest", "get_exchange", "names"]


def _registry() -> dict[str, Exchange]:
    from streamer.core.exchanges.binance import BINANCE
    from streamer.core.exchanges.coinbase import COINBASE
    from streamer.core.exchanges.kraken import KRAKEN

    return {x.name: x for x in (BINANCE, COINBASE, KRAKEN)}


def names() -> list[str]:
    return sorted(_registry())


def get_exchange(name: str) -> Exchange:
    registry = _registry()
    try:
        return registry[name]
    except KeyError:
        raise KeyError(f"unknown exchange {name!r}; known: {', '.join(sorted(registry))}") from None
