"""Real recorded Kraken trades (tests/fixtures/kraken, 1000 BTC/USDT trades, 2025-11-10 17:23 ..
2025-11-11 00:13 UTC, first taken from a real ``/0/public/Trades`` answer) rendered back as
``/0/public/Trades`` pages, the way Kraken serves them."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from streamer.core.types import Trade

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kraken"
TRADES_CSV = FIXTURES / "XBTUSDT_trades_20251110_1723-20251111_0013.csv"
OHLC_CSV = FIXTURES / "XBTUSDT_1m_20251110_1723-20251111_0016.csv"


@dataclass(frozen=True)
class Row:
    """One recorded trade, its price and quantity as Kraken's text."""

    trade_id: int
    ts_ms: int
    price: str
    qty: str
    taker_side: str

    def trade(self, symbol: str = "BTC-USDT") -> Trade:
        side = "buy" if self.taker_side == "buy" else "sell"
        return Trade("kraken", symbol, self.trade_id, self.ts_ms, float(self.price),
                     float(self.qty), side)  # fmt: skip

    def kraken_row(self) -> list[object]:
        """``[price, volume, time_s, "b"|"s", "l", "", trade_id]``; the recording keeps no
        order type, so every row says limit."""
        side = "b" if self.taker_side == "buy" else "s"
        return [self.price, self.qty, self.ts_ms / 1000, side, "l", "", self.trade_id]


def load_rows() -> list[Row]:
    with TRADES_CSV.open() as f:
        return [
            Row(int(r["trade_id"]), int(r["timestamp_ms"]), r["price"], r["qty"], r["taker_side"])
            for r in csv.DictReader(f)
        ]


def load_ohlc() -> dict[int, tuple[float, float, float, float, float]]:
    """Kraken's own 1-minute bars of the same stretch (its OHLC answer): open time -> OHLCV."""
    with OHLC_CSV.open() as f:
        return {
            int(r["open_time_ms"]): (
                float(r["open"]),
                float(r["high"]),
                float(r["low"]),
                float(r["close"]),
                float(r["volume"]),
            )
            for r in csv.DictReader(f)
        }


def trades_body(rows: list[Row], last_ns: int, pair_key: str = "XBTUSDT") -> bytes:
    return json.dumps(
        {"error": [], "result": {pair_key: [r.kraken_row() for r in rows], "last": str(last_ns)}}
    ).encode()


def trades_page(rows: list[Row], since_ns: int, per_page: int = 1000) -> bytes:
    """Kraken's answer to ``since=since_ns``: the first ``per_page`` trades after it (in ns),
    ``last`` the newest one's time in ns, or ``since`` itself when there is none."""
    after = [r for r in rows if r.ts_ms * 1_000_000 > since_ns][:per_page]
    return trades_body(after, after[-1].ts_ms * 1_000_000 if after else since_ns)
