"""History import and store: every CSV layout, Redis bar lists, bad rows with file:line.

The Redis import reads the streamer's lists through the streamer's own bar contract: a bar the
streamer still marks incomplete (its minute overlapped an outage) is never imported, and the
complete bar that backfill puts in its place replaces whatever the store holds for the minute.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from streamer.core.contracts.redis_bars import bars_key, encode_bar
from streamer.core.types import MINUTE_MS, Bar
from trainer.data import (
    BarTable,
    Gap,
    HistoryStore,
    ImportFailed,
    find_gaps,
    interval_label,
    parse_redis_bars,
    read_csv_bars,
    read_redis_bars,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "trainer"
BTC_1M = REPO / "models" / "data" / "BTCUSDT_1m_20230316_20230501.csv.gz"


def _simple_lines(n: int, skip: int = 0) -> list[str]:
    """The header and ``n`` real lines of the bundled BTCUSDT minute file."""
    with gzip.open(BTC_1M, "rt") as handle:
        lines = handle.read().splitlines()
    return [lines[0], *lines[1 + skip : 1 + skip + n]]


def test_binance_dump_without_header_in_milliseconds() -> None:
    result = read_csv_bars(FIXTURES / "binance_dump_BTCUSDT_1m_2023-04-24_ms.csv")
    assert result.layout == "binance"
    assert result.interval_ms == 60_000
    assert len(result.bars) == 180
    assert result.bad_rows == ()
    assert result.bars.open_time_ms[0] == 1682294400000  # 2023-04-24 00:00 UTC
    assert result.bars.ohlcv[0].tolist() == [27590.59, 27590.6, 27579.27, 27582.16, 42.47613]
    assert result.bars.line[0] == 1


def test_binance_dump_with_header_in_microseconds() -> None:
    result = read_csv_bars(FIXTURES / "binance_dump_ETHUSDT_1m_2025-05-20_us.csv")
    assert result.layout == "binance"
    assert len(result.bars) == 180
    assert result.bars.open_time_ms[0] == 1747699200000  # µs scaled to ms
    assert np.all(np.diff(result.bars.open_time_ms) == 60_000)
    assert result.bars.ohlcv[0].tolist() == [2528.14, 2530.8, 2527.97, 2528.28, 562.6879]
    assert result.bars.line[0] == 2  # line 1 is the header


def test_simple_layout_gzip_matches_the_source_rows() -> None:
    result = read_csv_bars(BTC_1M)
    assert result.layout == "simple"
    assert len(result.bars) == 66087
    assert result.bad_rows == ()
    # the one real outage in this file: 2023-03-24 12:40, 80 minutes
    assert find_gaps(result.bars.open_time_ms, 60_000) == (Gap(1679661600000, 80),)


def test_yahoo_daily_is_a_daily_data_set() -> None:
    result = read_csv_bars(FIXTURES / "yahoo_BTC-USD_1d_2019_2021.csv")
    assert result.layout == "yahoo"
    assert result.interval_ms == 86_400_000
    assert interval_label(result.interval_ms) == "1d"
    assert len(result.bars) == 1096
    assert result.bars.open_time_ms[0] == 1546300800000  # 2019-01-01 UTC
    # Open, High, Low, Close, Volume: Adj Close is not used
    assert result.bars.ohlcv[0].tolist() == [
        3746.713379,
        3850.913818,
        3707.231201,
        3843.52002,
        4324200990.0,
    ]


def test_yahoo_intraday_timestamps_with_offsets(tmp_path: Path) -> None:
    lines = (FIXTURES / "yahoo_BTC-USD_1d_2019_2021.csv").read_text().splitlines()
    rows = [r.split(",") for r in lines[1:4]]
    path = tmp_path / "hourly.csv"
    stamps = ["2019-01-01 00:00:00+00:00", "2019-01-01 02:00:00+01:00", "2019-01-01T02:00:00Z"]
    path.write_text(
        "Datetime,Open,High,Low,Close,Adj Close,Volume\n"
        + "\n".join(",".join([s, *r[1:]]) for s, r in zip(stamps, rows, strict=True))
    )
    result = read_csv_bars(path)
    assert result.bars.open_time_ms.tolist() == [1546300800000, 1546304400000, 1546308000000]
    assert result.interval_ms == 3_600_000


def test_bad_rows_are_reported_with_file_and_line(tmp_path: Path) -> None:
    lines = _simple_lines(12, skip=1000)
    cells = [line.split(",") for line in lines]
    cells[3][2] = "abc"  # line 4: non-numeric high
    cells[5][2], cells[5][3] = cells[5][3], str(float(cells[5][2]) + 50)  # line 6: high < low
    cells[7][5] = "-1.5"  # line 8: negative volume
    dup_conflict = [*cells[9]]  # line 14: line 10's open time with another close
    dup_conflict[4] = str(float(cells[9][4]) + 1)
    exact_dup = [*cells[11]]  # line 15: an exact repeat of line 12, harmless
    body = [*cells, dup_conflict, exact_dup]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(",".join(c) for c in body) + "\n")

    result = read_csv_bars(path)
    got = [(b.line, b.reason) for b in result.bad_rows]
    assert got == [
        (4, "non_numeric"),
        (6, "high_below_low"),
        (8, "negative_volume"),
        (10, "duplicate_conflict"),
        (14, "duplicate_conflict"),
    ]
    assert all(b.source == str(path) for b in result.bad_rows)
    assert str(result.bad_rows[0]).startswith(f"{path}:4: non_numeric")
    assert "differs on 14" in result.bad_rows[3].detail
    assert result.duplicates == 1
    # 12 data rows - 3 bad - the conflicting open time (both rows refused) = 8 good bars
    assert len(result.bars) == 8
    refused_times = {int(cells[i][0]) for i in (3, 5, 7, 9)}
    assert refused_times.isdisjoint(result.bars.open_time_ms.tolist())
    # good data around the bad rows is kept
    assert int(cells[4][0]) in result.bars.open_time_ms.tolist()


def test_unknown_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("when,price\n2023-01-01,1\n")
    with pytest.raises(ImportFailed, match="unknown CSV header"):
        read_csv_bars(path)


def _table(result_bars: BarTable, rows: slice) -> BarTable:
    return BarTable(result_bars.open_time_ms[rows], result_bars.ohlcv[rows], result_bars.line[rows])


def test_store_appends_are_idempotent_and_record_gaps(tmp_path: Path) -> None:
    bars = read_csv_bars(FIXTURES / "binance_dump_BTCUSDT_1m_2023-04-24_ms.csv").bars
    store = HistoryStore(tmp_path / "history")
    first = store.append("binance", "BTCUSDT", 60_000, _table(bars, slice(0, 100)), "a.csv")
    assert (first.added, first.unchanged, first.rows) == (100, 0, 100)
    # overlapping re-import with a hole at 120..129: only the new bars are added
    part = np.r_[50:120, 130:180]
    table = BarTable(bars.open_time_ms[part], bars.ohlcv[part], bars.line[part])
    second = store.append("binance", "BTCUSDT", 60_000, table, "b.csv")
    assert (second.added, second.unchanged, second.rows) == (70, 50, 170)
    assert second.gaps == (Gap(int(bars.open_time_ms[120]), 10),)
    again = store.append("binance", "BTCUSDT", 60_000, table, "b.csv")
    assert (again.added, again.unchanged, again.rows) == (0, 120, 170)

    loaded = store.load("binance", "BTCUSDT")
    assert loaded.open_time_ms.tolist() == bars.open_time_ms[np.r_[0:120, 130:180]].tolist()
    assert np.array_equal(loaded.ohlcv, bars.ohlcv[np.r_[0:120, 130:180]])
    info = store.info("binance", "BTCUSDT")
    assert info is not None
    assert info.gaps == (Gap(int(bars.open_time_ms[120]), 10),)
    assert info.sources == ("a.csv", "b.csv")
    assert store.path("binance", "BTCUSDT", 60_000).name == "1m.parquet"


def test_store_keeps_the_stored_bar_on_conflict(tmp_path: Path) -> None:
    bars = read_csv_bars(FIXTURES / "binance_dump_BTCUSDT_1m_2023-04-24_ms.csv").bars
    store = HistoryStore(tmp_path)
    store.append("binance", "BTCUSDT", 60_000, _table(bars, slice(0, 10)), "a.csv")
    changed = bars.ohlcv[:10].copy()
    changed[3, 4] += 1.0  # another volume for the 4th minute
    result = store.append(
        "binance",
        "BTCUSDT",
        60_000,
        BarTable(bars.open_time_ms[:10], changed, bars.line[:10]),
        "b.csv",
    )
    assert [(c.source, c.line, c.reason) for c in result.conflicts] == [
        ("b.csv", 4, "conflicts_with_store")
    ]
    assert np.array_equal(store.load("binance", "BTCUSDT").ohlcv, bars.ohlcv[:10])


def test_redis_bar_list_elements_parse_and_bad_ones_are_named() -> None:
    bars = read_csv_bars(FIXTURES / "binance_dump_BTCUSDT_1m_2023-04-24_ms.csv").bars
    elements = [
        json.dumps([int(t), *row.tolist(), 17]).encode()
        for t, row in zip(bars.open_time_ms[:5], bars.ohlcv[:5], strict=True)
    ]
    elements.insert(2, b"{not json")
    elements.append(b'[1682294700000, "x", 1, 1, 1, 1, 3]')
    elements.append(b"[1682294730000, 1, 1, 1, 1, 1, 3]")  # half a minute
    elements.append(b"[1682294760000, 1, 2, 1.5, 1, 1, 3]")  # low above open and close
    elements.append(b"[1682294820000, 0, 0, 0, 0, 1, 3]")  # no price
    elements.append(b"[1682294880000, 1, 1, 1, 1, 1]")  # no trade count
    result = parse_redis_bars("redis://h/tickcast:bars:binance:BTCUSDT", elements)
    assert len(result.bars) == 5
    assert np.array_equal(result.bars.ohlcv, bars.ohlcv[:5])
    got = [(b.line, b.reason, b.detail.split(":")[0]) for b in result.bad_rows]
    assert got == [
        (3, "bad_bar", "malformed bar b'{not json'"),
        (7, "bad_bar", "malformed bar b'[1682294700000, \"x\", 1, 1, 1, 1, 3]'"),
        (8, "bad_bar", "bar open time is not a minute start"),
        (9, "bad_bar", "bar prices out of order (need low <= open, close <= high)"),
        (10, "non_positive_price", "b'[1682294820000, 0, 0, 0, 0, 1, 3]'"),
        (11, "bad_bar", "malformed bar b'[1682294880000, 1, 1, 1, 1, 1]'"),
    ]
    assert "Expected `float`, got `str`" in result.bad_rows[1].detail


def _streamer_bars(n: int) -> list[Bar]:
    """The first ``n`` bars of the real BTCUSDT dump, as the streamer holds them."""
    bars = read_csv_bars(FIXTURES / "binance_dump_BTCUSDT_1m_2023-04-24_ms.csv").bars
    return [
        Bar("binance", "BTCUSDT", int(t), *row.tolist(), 42)
        for t, row in zip(bars.open_time_ms[:n], bars.ohlcv[:n], strict=True)
    ]


def _partial(bar: Bar) -> Bar:
    """What the streamer closes for ``bar``'s minute when an outage cut it short: the first
    trades only (less volume, another close), marked incomplete."""
    close = (bar.open + bar.close) / 2
    return Bar(
        bar.exchange,
        bar.symbol,
        bar.open_time_ms,
        bar.open,
        max(bar.open, close),
        min(bar.open, close),
        close,
        bar.volume / 3,
        bar.trades // 3,
        complete=False,
    )


def _bar_table(bars: list[Bar]) -> BarTable:
    return BarTable(
        np.array([b.open_time_ms for b in bars], dtype=np.int64),
        np.array([[b.open, b.high, b.low, b.close, b.volume] for b in bars], dtype=np.float64),
        np.arange(1, len(bars) + 1, dtype=np.int64),
    )


def test_redis_bars_marked_incomplete_are_not_imported() -> None:
    bars = _streamer_bars(6)
    marked = {bars[2].open_time_ms, bars[4].open_time_ms}
    result = parse_redis_bars("redis", [encode_bar(b) for b in bars], marked)
    assert result.bars.open_time_ms.tolist() == [bars[i].open_time_ms for i in (0, 1, 3, 5)]
    assert result.bad_rows == ()
    assert result.incomplete == 2


def test_store_append_with_replace_takes_the_new_bar(tmp_path: Path) -> None:
    bars = _streamer_bars(6)
    store = HistoryStore(tmp_path)
    store.append("binance", "BTCUSDT", MINUTE_MS, _bar_table([*bars[:3], _partial(bars[3])]), "a")
    result = store.append("binance", "BTCUSDT", MINUTE_MS, _bar_table(bars), "b", replace=True)
    assert (result.added, result.unchanged, result.replaced, result.conflicts) == (2, 3, 1, ())
    loaded = store.load("binance", "BTCUSDT")
    assert np.array_equal(loaded.ohlcv, _bar_table(bars).ohlcv)
    again = store.append("binance", "BTCUSDT", MINUTE_MS, _bar_table(bars), "b", replace=True)
    assert (again.added, again.unchanged, again.replaced) == (0, 6, 0)


@pytest.mark.integration
def test_redis_import_reads_the_streamers_bar_list(redis_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import redis

    bars = read_csv_bars(FIXTURES / "binance_dump_BTCUSDT_1m_2023-04-24_ms.csv").bars
    client = redis.Redis.from_url(redis_server.url)
    key = bars_key("binance", "BTCUSDT")
    client.rpush(
        key,
        *[
            json.dumps([int(t), *row.tolist(), 42])
            for t, row in zip(bars.open_time_ms, bars.ohlcv, strict=True)
        ],
    )
    client.close()
    result = read_redis_bars(redis_server.url, "binance", "BTCUSDT")
    assert result.bad_rows == ()
    assert np.array_equal(result.bars.open_time_ms, bars.open_time_ms)
    assert np.array_equal(result.bars.ohlcv, bars.ohlcv)

    from trainer.pipeline import pull_redis

    store = HistoryStore(tmp_path)
    assert pull_redis(store, redis_server.url, None, lambda _: None) == 180
    assert pull_redis(store, redis_server.url, None, lambda _: None) == 0  # idempotent
    assert len(store.load("binance", "BTCUSDT")) == 180


@pytest.mark.integration
async def test_a_partial_bar_from_an_outage_never_becomes_training_data(
    redis_server,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """Defect: the import ignored tickcast:incomplete:* and the store kept the first bar written,
    so the partial bar of an outage's minute stayed in the training data for good."""
    from streamer.io.store import RedisBarStore
    from trainer.pipeline import pull_redis

    bars = _streamer_bars(10)
    partial = _partial(bars[5])
    with_partial = [*bars[:5], partial, *bars[6:]]
    streamer = RedisBarStore.from_url(redis_server.url)
    try:
        await streamer.write(with_partial)  # minute 5 overlapped a feed outage
        store = HistoryStore(tmp_path / "history")
        assert pull_redis(store, redis_server.url, None, lambda _: None) == 9
        assert store.load("binance", "BTCUSDT").open_time_ms.tolist() == [
            b.open_time_ms for b in bars if b is not bars[5]
        ]

        await streamer.repair([bars[5]])  # backfill: the exchange's bar, mark cleared
        assert pull_redis(store, redis_server.url, None, lambda _: None) == 1
        assert np.array_equal(store.load("binance", "BTCUSDT").ohlcv, _bar_table(bars).ohlcv)

        # a store that already holds the partial bar (imported before marks were read): the
        # complete bar replaces it
        older = HistoryStore(tmp_path / "older")
        older.append("binance", "BTCUSDT", MINUTE_MS, _bar_table(with_partial), "redis:old")
        assert pull_redis(older, redis_server.url, None, lambda _: None) == 0
        assert np.array_equal(older.load("binance", "BTCUSDT").ohlcv, _bar_table(bars).ohlcv)
    finally:
        await streamer.close()
