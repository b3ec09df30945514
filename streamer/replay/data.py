"""Recorded market data for the replay exchange: CSV loading, kline aggregation, trade synthesis.

Two kinds of source, both real recordings (see ``data/SOURCES.md``):

* trade CSVs, header ``trade_id,timestamp_ms,price,qty,is_buyer_maker,taker_side``. They are
  replayed trade by trade, and their 1-minute klines (for REST and the ``kline_1m`` stream) are
  aggregated from them, with flat klines (o=h=l=c=previous close, volume 0) for minutes without
  trades, as Binance serves them.
* 1-minute kline CSVs, header ``open_time_ms,open,high,low,close,volume`` (optionally ``.gz``).
  REST and the ``kline_1m`` stream serve the source klines themselves. A streamer needs trades,
  so the trade stream is synthesised from each kline, deterministically:

  - a minute with volume 0 has no trades (a client builds its flat bar itself);
  - otherwise four trades, at the minute's open +0 s, +15 s, +30 s and +45 s, at the open, high,
    low and close prices (the source's text, verbatim). Taker sides: buy, buy, sell, and for the
    close buy if close >= open else sell. Trade ids are ``open_time_ms // 60000 * 4 + i``
    (i = 0..3): unique, increasing and gap-free over contiguous minutes;
  - the volume ``V = M * 2**e`` (``M`` its 53-bit integer significand) is split into quantities
    ``n_i * 2**e`` with ``n_0 = n_1 = n_2 = M // 4`` and ``n_3 = M - 3 * (M // 4)``. Every sum of
    any subset of them is an integer multiple of ``2**e`` not above ``M * 2**e``, which is exactly
    representable, so a client summing them in any order (naive or ``math.fsum``) gets exactly
    ``V``, and every quantity is positive.

  A client aggregating these trades therefore reproduces the source OHLCV exactly (4 trades in
  the bar's trade count; the REST klines report the same count).

Prices and quantities stay the source's text: the wire carries the recorded tokens verbatim.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from streamer.core.types import MINUTE_MS, floor_minute

DATA_DIR = Path(__file__).resolve().parent / "data"

TRADE_HEADER = ("trade_id", "timestamp_ms", "price", "qty", "is_buyer_maker", "taker_side")
KLINE_HEADER = ("open_time_ms", "open", "high", "low", "close", "volume")

# offsets of the synthesised open/high/low/close trades inside their minute
SYNTH_OFFSETS_MS = (0, 15_000, 30_000, 45_000)
SYNTH_TRADES_PER_MINUTE = len(SYNTH_OFFSETS_MS)
# below this the quarter parts would lose bits to gradual underflow
_SMALLEST_SPLIT = 2.0**-960


@dataclass(frozen=True, slots=True)
class TradeRow:
    """One trade as it goes on the wire; ``price`` and ``qty`` are the source's text."""

    trade_id: int
    ts_ms: int
    price: str
    qty: str
    buyer_is_maker: bool  # Binance "m": True when the taker sold


@dataclass(frozen=True, slots=True)
class Kline:
    """The twelve columns of a Binance 1-minute kline (REST array, ``kline_1m`` event)."""

    open_time_ms: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    trades: int
    quote_volume: str
    taker_buy_volume: str
    taker_buy_quote_volume: str
    first_trade_id: int  # -1 when the minute has no trades, as Binance reports it
    last_trade_id: int

    @property
    def close_time_ms(self) -> int:
        """Binance's kline close time: the last millisecond of the minute."""
        return self.open_time_ms + MINUTE_MS - 1

    def rest_row(self) -> list[int | str]:
        """The row of ``GET /api/v3/klines``."""
        return [
            self.open_time_ms,
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.close_time_ms,
            self.quote_volume,
            self.trades,
            self.taker_buy_volume,
            self.taker_buy_quote_volume,
            "0",
        ]


SourceKind = Literal["trades", "klines"]


@dataclass(frozen=True, slots=True)
class Source:
    """One symbol's recording: its klines (sorted, one per minute present) and how to get the
    trades of each minute."""

    symbol: str
    kind: SourceKind
    path: str
    klines: tuple[Kline, ...]
    # trades source: the recorded trades of klines[i] are trades[trade_start[i]:trade_start[i+1]]
    trades: tuple[TradeRow, ...] = ()
    trade_start: tuple[int, ...] = ()

    @property
    def first_open_ms(self) -> int:
        return self.klines[0].open_time_ms

    @property
    def end_ms(self) -> int:
        """End of the last minute (exclusive)."""
        return self.klines[-1].open_time_ms + MINUTE_MS

    def index_at(self, open_time_ms: int) -> int:
        """Index of the first kline opening at or after ``open_time_ms``."""
        return bisect_left(self.klines, open_time_ms, key=_open_time)

    def minute_trades(self, index: int) -> list[TradeRow]:
        """The trades of ``klines[index]``: recorded, or synthesised for a kline source."""
        if self.kind == "trades":
            return list(self.trades[self.trade_start[index] : self.trade_start[index + 1]])
        return synthesize_trades(self.klines[index])

    def minutes(self, start: int = 0) -> Iterator[tuple[Kline, list[TradeRow]]]:
        for index in range(start, len(self.klines)):
            yield self.klines[index], self.minute_trades(index)


def _open_time(kline: Kline) -> int:
    return kline.open_time_ms


def split_volume(volume: float) -> list[float]:
    """Four positive quantities whose sum, in any order and by any method, is ``volume``."""
    if not (math.isfinite(volume) and volume >= _SMALLEST_SPLIT):
        raise ValueError(f"cannot split volume {volume!r} into four positive exact parts")
    mantissa, exponent = math.frexp(volume)
    significand = int(mantissa * 2**53)  # exact: mantissa has 53 significant bits
    scale = exponent - 53
    part = significand // 4
    rest = significand - 3 * part
    return [math.ldexp(n, scale) for n in (part, part, part, rest)]


def synthesize_trades(kline: Kline) -> list[TradeRow]:
    """The deterministic trades that reproduce ``kline`` (module docstring explains the rule)."""
    volume = float(kline.volume)
    if volume == 0.0:
        return []
    quantities = split_volume(volume)
    close_buy = float(kline.close) >= float(kline.open)
    # buyer_is_maker is True when the taker sold
    makers = (False, False, True, not close_buy)
    prices = (kline.open, kline.high, kline.low, kline.close)
    first_id = kline.open_time_ms // MINUTE_MS * SYNTH_TRADES_PER_MINUTE
    return [
        TradeRow(
            trade_id=first_id + i,
            ts_ms=kline.open_time_ms + SYNTH_OFFSETS_MS[i],
            price=prices[i],
            qty=repr(quantities[i]),
            buyer_is_maker=makers[i],
        )
        for i in range(SYNTH_TRADES_PER_MINUTE)
    ]


def _fsum_text(values: list[float]) -> str:
    return repr(math.fsum(values))


def kline_from_trades(open_time_ms: int, trades: list[TradeRow], prev_close: str) -> Kline:
    """Aggregate one minute of trades the way a bar aggregator does (sums by ``math.fsum``)."""
    if not trades:
        return Kline(
            open_time_ms, prev_close, prev_close, prev_close, prev_close,
            "0.0", 0, "0.0", "0.0", "0.0", -1, -1,
        )  # fmt: skip
    prices = [float(t.price) for t in trades]
    qtys = [float(t.qty) for t in trades]
    high = max(range(len(trades)), key=prices.__getitem__)
    low = min(range(len(trades)), key=prices.__getitem__)
    buys = [i for i, t in enumerate(trades) if not t.buyer_is_maker]
    return Kline(
        open_time_ms=open_time_ms,
        open=trades[0].price,
        high=trades[high].price,
        low=trades[low].price,
        close=trades[-1].price,
        volume=_fsum_text(qtys),
        trades=len(trades),
        quote_volume=_fsum_text([p * q for p, q in zip(prices, qtys, strict=True)]),
        taker_buy_volume=_fsum_text([qtys[i] for i in buys]),
        taker_buy_quote_volume=_fsum_text([prices[i] * qtys[i] for i in buys]),
        first_trade_id=trades[0].trade_id,
        last_trade_id=trades[-1].trade_id,
    )


def _complete_kline(row: list[str], where: str) -> Kline:
    """A source kline with the columns a 1m CSV lacks filled from its synthesised trades."""
    try:
        open_time = int(row[0])
        prices = [float(token) for token in row[1:5]]
        volume = float(row[5])
        if not all(math.isfinite(p) and p > 0 for p in prices) or not volume >= 0:
            raise ValueError(f"prices must be positive and volume >= 0: {row!r}")
        if open_time % MINUTE_MS:
            raise ValueError(f"open time {open_time} is not on a minute")
        bare = Kline(open_time, *_ohlcv(row), 0, "0.0", "0.0", "0.0", -1, -1)
        trades = synthesize_trades(bare)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not trades:
        return bare
    full = kline_from_trades(open_time, trades, bare.close)
    # keep the source's own tokens for OHLCV; the synthesised trades reproduce them exactly
    return Kline(
        open_time, *_ohlcv(row),
        full.trades, full.quote_volume, full.taker_buy_volume, full.taker_buy_quote_volume,
        full.first_trade_id, full.last_trade_id,
    )  # fmt: skip


def _ohlcv(row: list[str]) -> tuple[str, str, str, str, str]:
    return row[1], row[2], row[3], row[4], row[5]


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    rows = list(csv.reader(io.StringIO(raw.decode())))
    if not rows:
        raise ValueError(f"{path}: empty file")
    return rows[0], rows[1:]


def symbol_from_path(path: Path) -> str:
    """``BTCUSDT_1m_20230427_20230501.csv.gz`` -> ``BTCUSDT``."""
    return path.name.split("_", 1)[0].split(".", 1)[0].upper()


def load_source(path: str | Path, symbol: str | None = None) -> Source:
    """Load a trade or 1m-kline CSV (kind told by its header). ``symbol`` defaults to the file
    name's first ``_``-separated part, so one file can also be replayed under another name."""
    path = Path(path)
    symbol = (symbol or symbol_from_path(path)).upper()
    header, rows = _read_rows(path)
    if not rows:
        raise ValueError(f"{path}: no data rows")
    if tuple(header[: len(TRADE_HEADER)]) == TRADE_HEADER:
        return _trade_source(path, symbol, rows)
    if tuple(header[: len(KLINE_HEADER)]) == KLINE_HEADER:
        return _kline_source(path, symbol, rows)
    raise ValueError(f"{path}: unknown header {header!r}; want {TRADE_HEADER} or {KLINE_HEADER}")


def _kline_source(path: Path, symbol: str, rows: list[list[str]]) -> Source:
    klines: list[Kline] = []
    for number, row in enumerate(rows, start=2):
        kline = _complete_kline(row, f"{path}:{number}")
        if klines and kline.open_time_ms <= klines[-1].open_time_ms:
            raise ValueError(f"{path}:{number}: open times must increase")
        klines.append(kline)
    return Source(symbol, "klines", str(path), tuple(klines))


def _trade_source(path: Path, symbol: str, rows: list[list[str]]) -> Source:
    trades: list[TradeRow] = []
    for number, row in enumerate(rows, start=2):
        try:
            trade = TradeRow(
                trade_id=int(row[0]),
                ts_ms=int(row[1]),
                price=row[2],
                qty=row[3],
                buyer_is_maker={"true": True, "false": False}[row[4].lower()],
            )
            price, qty = float(trade.price), float(trade.qty)
        except (ValueError, IndexError, KeyError) as exc:
            raise ValueError(f"{path}:{number}: bad trade row {row!r} ({exc!r})") from None
        if not (math.isfinite(price) and math.isfinite(qty) and price > 0 and qty > 0):
            raise ValueError(f"{path}:{number}: price and qty must be positive: {row!r}")
        if trades and (trade.ts_ms, trade.trade_id) <= (trades[-1].ts_ms, trades[-1].trade_id):
            raise ValueError(f"{path}:{number}: trades must be sorted by time and id")
        trades.append(trade)
    klines: list[Kline] = []
    starts: list[int] = []
    index = 0
    prev_close = trades[0].price
    for minute in range(floor_minute(trades[0].ts_ms), trades[-1].ts_ms + 1, MINUTE_MS):
        begin = index
        while index < len(trades) and trades[index].ts_ms < minute + MINUTE_MS:
            index += 1
        kline = kline_from_trades(minute, trades[begin:index], prev_close)
        prev_close = kline.close
        klines.append(kline)
        starts.append(begin)
    starts.append(len(trades))
    return Source(symbol, "trades", str(path), tuple(klines), tuple(trades), tuple(starts))


def bundled_kline_paths() -> list[Path]:
    """The bundled 1m klines (BTCUSDT, ETHUSDT, SOLUSDT over the same four days)."""
    return sorted(DATA_DIR.glob("*_1m_*.csv.gz"))


def bundled_trade_paths() -> list[Path]:
    """The bundled recorded trades, one file per recording: two Binance ``BTCUSDT`` (pick one by
    name, e.g. ``tardis``) and one Kraken ``BTC-USDT`` (``kraken``)."""
    return sorted(DATA_DIR.glob("*_trades_*.csv.gz"))
