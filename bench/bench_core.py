"""Pure-core throughput: Binance @trade frames -> parse -> BarAggregator, on one core.

The frames are built from real trades: the 9,999 Binance USD-M BTCUSDT trades of 2020-02-22
00:00-02:05 in ../shared/data/trades/binance_usdm_perp/ (tardis.dev). They are written as
combined-stream ``@trade`` frames in Binance spot's current layout (prices and quantities as
8-decimal strings, ``E`` a few ms after ``T``) and repeated with timestamps shifted by the span
of the file and ids shifted by its count, so the aggregator sees one continuous, strictly
increasing tape of >= 1,000,000 trades (bars keep closing as the watermark advances). Frames
are built before timing; only parse and add are timed.

Time is this process's CPU time (``time.process_time``), so the figures are per core and not
distorted by other processes competing for a shared machine; on an idle machine it equals wall
time, as the loop is single-threaded and does no I/O.

Prints one JSON line per figure (median of ``--repeat`` runs):
  core_parse_aggregate  parse + aggregate, trades/s   (target 500,000)
  core_aggregate        aggregate only (pre-parsed trades), trades/s
  core_parse            parse only, trades/s
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import statistics
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from streamer.core.bars import BarAggregator
from streamer.core.exchanges.binance import BINANCE
from streamer.core.types import Bar, Trade

REPO = Path(__file__).resolve().parent.parent
TRADES_CSV = (
    REPO.parent
    / "shared"
    / "data"
    / "trades"
    / "binance_usdm_perp"
    / "BTCUSDT_trades_20200222_0000-0205_tardis.csv.gz"
)
TARGET_TRADES_PER_S = 500_000
CHUNK = 100_000

_EIGHT = Decimal("0.00000001")


def load_rows(path: Path) -> list[tuple[int, int, str, str, bool]]:
    """(trade_id, ts_ms, price, qty, buyer_is_maker) with 8-decimal strings, as Binance spot."""
    with gzip.open(path, "rt", newline="") as f:
        return [
            (
                int(r["trade_id"]),
                int(r["timestamp_ms"]),
                str(Decimal(r["price"]).quantize(_EIGHT)),
                str(Decimal(r["qty"]).quantize(_EIGHT)),
                r["is_buyer_maker"] == "true",
            )
            for r in csv.DictReader(f)
        ]


def frame_chunks(rows: list[tuple[int, int, str, str, bool]], total: int) -> Iterator[list[bytes]]:
    """Combined-stream @trade frames, repeating the tape with shifted times and ids."""
    span_ms = rows[-1][1] - rows[0][1] + 1_000
    count = len(rows)
    chunk: list[bytes] = []
    for n in range(total):
        rep, i = divmod(n, count)
        trade_id, ts, price, qty, maker = rows[i]
        ts += rep * span_ms
        trade_id += rep * count
        chunk.append(
            (
                f'{{"stream":"btcusdt@trade","data":{{"e":"trade","E":{ts + 2},"s":"BTCUSDT",'
                f'"t":{trade_id},"p":"{price}","q":"{qty}","T":{ts},'
                f'"m":{"true" if maker else "false"},"M":true}}}}'
            ).encode()
        )
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_parse_aggregate(chunks: list[list[bytes]]) -> tuple[float, int, list[Bar]]:
    """Seconds spent in parse + add (frames prepared), trades seen, bars closed."""
    parse = BINANCE.parse
    agg = BarAggregator("binance")
    add = agg.add
    closed: list[Bar] = []
    trades = 0
    elapsed = 0.0
    for chunk in chunks:
        start = time.process_time()
        for raw in chunk:
            for item in parse(raw):
                if isinstance(item, Trade):
                    bars = add(item)
                    if bars:
                        closed += bars
        elapsed += time.process_time() - start
        trades += len(chunk)
    check(agg, closed, trades)
    return elapsed, trades, closed


def run_parse(chunks: list[list[bytes]]) -> tuple[float, list[list[Trade]]]:
    parse = BINANCE.parse
    parsed: list[list[Trade]] = []
    elapsed = 0.0
    for chunk in chunks:
        out: list[Trade] = []
        start = time.process_time()
        for raw in chunk:
            out += parse(raw)  # type: ignore[arg-type]  # @trade frames give trades only
        elapsed += time.process_time() - start
        parsed.append(out)
    return elapsed, parsed


def run_aggregate(parsed: list[list[Trade]]) -> tuple[float, int]:
    agg = BarAggregator("binance")
    add = agg.add
    closed: list[Bar] = []
    trades = 0
    elapsed = 0.0
    for chunk in parsed:
        start = time.process_time()
        for trade in chunk:
            bars = add(trade)
            if bars:
                closed += bars
        elapsed += time.process_time() - start
        trades += len(chunk)
    check(agg, closed, trades)
    return elapsed, trades


def check(agg: BarAggregator, closed: list[Bar], trades: int) -> None:
    """Nothing lost: every trade accepted and in exactly one bar (closed or still open)."""
    assert (agg.accepted, agg.duplicates, agg.late, agg.future) == (trades, 0, 0, 0)
    assert sum(b.trades for b in closed) + sum(b.trades for b in agg.flush()) == trades


def emit(name: str, value: float, target: float | None) -> None:
    line = {"bench": name, "value": round(value), "unit": "trades/s", "target": target}
    print(json.dumps(line | {"better": "higher"}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--trades", type=int, default=1_000_000, help="frames per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the median is printed")
    args = ap.parse_args()

    rows = load_rows(TRADES_CSV)
    chunks = list(frame_chunks(rows, args.trades))
    both, agg_only, parse_only = [], [], []
    for _ in range(args.repeat):
        elapsed, trades, _closed = run_parse_aggregate(chunks)
        both.append(trades / elapsed)
        parse_s, parsed = run_parse(chunks)
        parse_only.append(trades / parse_s)
        agg_s, agg_trades = run_aggregate(parsed)
        agg_only.append(agg_trades / agg_s)
        del parsed
    emit("core_parse_aggregate", statistics.median(both), TARGET_TRADES_PER_S)
    emit("core_aggregate", statistics.median(agg_only), None)
    emit("core_parse", statistics.median(parse_only), None)


if __name__ == "__main__":
    main()
