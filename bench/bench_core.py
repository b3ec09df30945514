"""Pure-core throughput: each venue's trade frames -> parse -> BarAggregator, on one core.

The frames carry real trades: the 9,999 Binance USD-M BTCUSDT trades of 2020-02-22
00:00-02:05 (tardis.dev), as bundled with the replay exchange (``streamer/replay/data/``),
repeated with timestamps shifted by the span of the file and ids shifted by its count, so the
aggregator sees one continuous, strictly increasing tape of ``--trades`` trades (bars keep
closing as the watermark advances). Frames are built before timing; only parse and add are
timed.

* Binance: combined-stream ``@trade`` frames in Binance spot's current layout (prices and
  quantities as 8-decimal strings, ``E`` a few ms after ``T``), as before.
* Every venue, Binance included (``core_parse_aggregate.<venue>``): the frames that venue's
  replay dialect sends (``streamer/replay/<venue>.py``), which have the shapes of that venue's
  recorded frames (Coinbase ``match``, Kraken v2 ``trade``, OKX ``trades`` push, Bybit v5
  ``publicTrade``, Bitstamp ``live_trades``), one trade per frame, parsed by the streamer's
  own parser for the venue.

Time is this process's CPU time (``time.process_time``), so the figures are per core and not
distorted by other processes competing for a shared machine; on an idle machine it equals wall
time, as the loop is single-threaded and does no I/O.

Prints one JSON line per figure (median of ``--repeat`` runs):
  core_parse_aggregate          Binance parse + aggregate, trades/s   (target 500,000)
  core_aggregate                aggregate only (pre-parsed trades), trades/s
  core_parse                    Binance parse only, trades/s
  core_parse_aggregate.<venue>  that venue's frames, parse + aggregate (target 300,000;
                                Binance 500,000)

    .venv/bin/python bench/bench_core.py [--trades N] [--repeat N] [--venue NAME ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import TypeVar

from benchkit import figure

from streamer.core.bars import BarAggregator
from streamer.core.exchanges import get_exchange
from streamer.core.exchanges.binance import BINANCE
from streamer.core.types import Bar, Trade
from streamer.replay.cli import venue_symbol
from streamer.replay.data import TradeRow, bundled_trade_paths, load_source
from streamer.replay.server import DIALECTS

TARGET_TRADES_PER_S = 500_000  # Binance, the first venue
TARGET_VENUE_TRADES_PER_S = 300_000  # every other venue
CHUNK = 100_000
VENUES = ("binance", "coinbase", "kraken", "okx", "bybit", "bitstamp")

_EIGHT = Decimal("0.00000001")

T = TypeVar("T")
Row = tuple[int, int, str, str, bool]  # trade_id, ts_ms, price, qty, buyer_is_maker


def load_rows() -> list[Row]:
    """The bundled tardis.dev trades: (trade_id, ts_ms, price, qty, buyer_is_maker), prices
    and quantities as the recording's text."""
    path = next(p for p in bundled_trade_paths() if "tardis" in p.name)
    source = load_source(path, "BTCUSDT")
    return [(t.trade_id, t.ts_ms, t.price, t.qty, t.buyer_is_maker) for t in source.trades]


def tape(rows: list[Row], total: int) -> Iterator[Row]:
    """``total`` trades: the recording over and over, shifted in time and ids each lap."""
    span_ms = rows[-1][1] - rows[0][1] + 1_000
    count = len(rows)
    for n in range(total):
        rep, i = divmod(n, count)
        trade_id, ts, price, qty, maker = rows[i]
        yield trade_id + rep * count, ts + rep * span_ms, price, qty, maker


def chunked(frames: Iterator[bytes]) -> list[list[bytes]]:
    chunks: list[list[bytes]] = [[]]
    for frame in frames:
        if len(chunks[-1]) == CHUNK:
            chunks.append([])
        chunks[-1].append(frame)
    return chunks


def binance_frames(rows: list[Row], total: int) -> list[list[bytes]]:
    """Combined-stream @trade frames in Binance spot's layout (8-decimal strings)."""

    def frames() -> Iterator[bytes]:
        for trade_id, ts, price, qty, maker in tape(rows, total):
            p = Decimal(price).quantize(_EIGHT)
            q = Decimal(qty).quantize(_EIGHT)
            yield (
                f'{{"stream":"btcusdt@trade","data":{{"e":"trade","E":{ts + 2},"s":"BTCUSDT",'
                f'"t":{trade_id},"p":"{p}","q":"{q}","T":{ts},'
                f'"m":{"true" if maker else "false"},"M":true}}}}'
            ).encode()

    return chunked(frames())


def venue_frames(venue: str, rows: list[Row], total: int) -> list[list[bytes]]:
    """The frames ``venue``'s replay dialect sends for each trade of the tape (Binance: the
    combined-stream framing the streamer connects with)."""
    symbol = venue_symbol(venue, "BTCUSDT")
    dialect = DIALECTS[venue]([symbol])
    (stream, encode), *_ = dialect.channels(symbol).trades
    framing = 1 if venue == "binance" else 0

    def frames() -> Iterator[bytes]:
        for trade_id, ts, price, qty, maker in tape(rows, total):
            event = encode(symbol, TradeRow(trade_id, ts, price, qty, maker))
            yield dialect.frames(stream, event)[framing].encode()

    return chunked(frames())


def cpu_seconds(chunks: Sequence[list[T]], run_chunk: Callable[[list[T]], None]) -> float:
    """CPU seconds spent in ``run_chunk`` over every chunk: one timer pair a chunk, so what is
    timed is the loop over its items alone."""
    elapsed = 0.0
    for chunk in chunks:
        start = time.process_time()
        run_chunk(chunk)
        elapsed += time.process_time() - start
    return elapsed


def run_parse_aggregate(
    parse: Callable[[bytes], Sequence[object]], venue: str, chunks: list[list[bytes]]
) -> float:
    """Seconds spent in parse + add (frames prepared); checks that nothing was lost."""
    agg = BarAggregator(venue)
    add = agg.add
    closed: list[Bar] = []

    def parse_and_add(chunk: list[bytes]) -> None:
        for raw in chunk:
            for item in parse(raw):
                if isinstance(item, Trade):
                    bars = add(item)
                    if bars:
                        closed.extend(bars)

    elapsed = cpu_seconds(chunks, parse_and_add)
    check(agg, closed, sum(len(chunk) for chunk in chunks))
    return elapsed


def run_parse(chunks: list[list[bytes]]) -> tuple[float, list[list[Trade]]]:
    parse = BINANCE.parse
    parsed: list[list[Trade]] = []

    def parse_only(chunk: list[bytes]) -> None:
        out: list[Trade] = []
        for raw in chunk:
            out += parse(raw)  # type: ignore[arg-type]  # @trade frames give trades only
        parsed.append(out)

    return cpu_seconds(chunks, parse_only), parsed


def run_aggregate(parsed: list[list[Trade]]) -> tuple[float, int]:
    agg = BarAggregator("binance")
    add = agg.add
    closed: list[Bar] = []

    def add_only(chunk: list[Trade]) -> None:
        for trade in chunk:
            bars = add(trade)
            if bars:
                closed.extend(bars)

    elapsed = cpu_seconds(parsed, add_only)
    trades = sum(len(chunk) for chunk in parsed)
    check(agg, closed, trades)
    return elapsed, trades


def check(agg: BarAggregator, closed: list[Bar], trades: int) -> None:
    """Nothing lost: every trade accepted and in exactly one bar (closed or still open)."""
    assert (agg.accepted, agg.duplicates, agg.late, agg.future) == (trades, 0, 0, 0)
    assert sum(b.trades for b in closed) + sum(b.trades for b in agg.flush()) == trades


def emit(name: str, value: float, target: float | None) -> None:
    figure(name, round(value), "trades/s", target, "higher")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--trades", type=int, default=1_000_000, help="frames per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the median is printed")
    ap.add_argument(
        "--venue",
        action="append",
        choices=VENUES,
        help="venues of the per-venue figures (repeat; default all six)",
    )
    args = ap.parse_args()

    rows = load_rows()
    chunks = binance_frames(rows, args.trades)
    both, agg_only, parse_only = [], [], []
    for _ in range(args.repeat):
        both.append(args.trades / run_parse_aggregate(BINANCE.parse, "binance", chunks))
        parse_s, parsed = run_parse(chunks)
        parse_only.append(args.trades / parse_s)
        agg_s, agg_trades = run_aggregate(parsed)
        agg_only.append(agg_trades / agg_s)
        del parsed
    emit("core_parse_aggregate", statistics.median(both), TARGET_TRADES_PER_S)
    emit("core_aggregate", statistics.median(agg_only), None)
    emit("core_parse", statistics.median(parse_only), None)
    del chunks

    for venue in args.venue or VENUES:
        chunks = venue_frames(venue, rows, args.trades)
        parse = get_exchange(venue).parse
        rates = [
            args.trades / run_parse_aggregate(parse, venue, chunks) for _ in range(args.repeat)
        ]
        target = TARGET_TRADES_PER_S if venue == "binance" else TARGET_VENUE_TRADES_PER_S
        emit(f"core_parse_aggregate.{venue}", statistics.median(rates), target)
        del chunks


if __name__ == "__main__":
    main()
