"""OKX v5 public ``trades`` channel and REST history-candles.

``okx.jsonl`` holds real frames recorded by cryptofeed on ``wss://ws.okx.com:8443/ws/v5/public``
(every ``trades`` push of the recording plus a few acks, tickers and books pushes;
tests/fixtures/ws/README.md). No OKX REST response was recorded: the candle bodies below follow
the documented example of ``GET /api/v5/market/history-candles`` (their open times moved to
minute starts), and the paging test serves real Bybit spot minutes
(``bybit_spot_BTCUSDT_1m_20221213.csv``) in OKX's row layout.
"""

from __future__ import annotations

import json

import pytest
from support.parsers import BYBIT_MINUTES, csv_rows, parse_recording, recorded_frames, serve_pages

from streamer.core.bars import BarAggregator
from streamer.core.exchanges.base import Reconnect
from streamer.core.exchanges.okx import KEEPALIVE_MESSAGE, OKX
from streamer.core.paging import RestPager
from streamer.core.types import MINUTE_MS, Bar, Trade

FRAMES = recorded_frames("okx.jsonl")


# --- real recorded frames -------------------------------------------------------------------


def test_every_recorded_trade_carries_the_frame_values() -> None:
    for line in FRAMES:
        frame = json.loads(line)
        if frame.get("arg", {}).get("channel") != "trades" or "data" not in frame:
            continue
        (trade,) = OKX.parse(line)
        (data,) = frame["data"]
        assert isinstance(trade, Trade)
        assert trade.trade_id == int(data["tradeId"]) and trade.ts_ms == int(data["ts"])
        assert trade.price == float(data["px"]) and trade.qty == float(data["sz"])
        assert trade.taker_side == data["side"] and trade.symbol == data["instId"]
    assert OKX.parse(FRAMES[-1].decode()) == OKX.parse(FRAMES[-1])


def test_recorded_spot_trade_ids_are_consecutive_integers_and_make_one_exact_bar() -> None:
    """The recording's 69 BTC-USDT trades: ids 338476307..338476375 without a hole, all in the
    minute 2022-05-13 16:27 UTC; the aggregator makes their bar from the parsed trades."""
    spot = [t for t in parse_recording(OKX, "okx.jsonl")[0] if t.symbol == "BTC-USDT"]
    assert [t.trade_id for t in spot] == list(range(338476307, 338476376))
    agg = BarAggregator("okx")
    for t in spot:
        assert agg.add(t) == []
    assert agg.on_clock(1652459220000 + MINUTE_MS + 2000) == [
        Bar("okx", "BTC-USDT", 1652459220000, 30236.0, 30251.7, 30220.1, 30227.6, 3.48657495, 69)
    ]


def test_service_upgrade_notice_asks_for_a_new_connection() -> None:
    # message shape of OKX's WebSocket notice (code 64008), sent about 30 s before the cut
    notice = (
        b'{"event":"notice","code":"64008","msg":"The connection will soon be closed for a '
        b'service upgrade. Please reconnect.","connId":"a4d3ae55"}'
    )
    assert OKX.parse(notice) == [Reconnect("service_upgrade")]


def test_keepalive_is_the_text_ping() -> None:
    assert KEEPALIVE_MESSAGE == "ping"


# --- connections ----------------------------------------------------------------------------


def test_one_subscribe_message_per_connection() -> None:
    plans = OKX.connections("ws://127.0.0.1:9", [f"C{i}-USDT" for i in range(250)], ["trades"])
    assert all(len(p.subscribe) == 1 for p in plans)


# --- REST history-candles -------------------------------------------------------------------

M = 1597026360000  # the documented example's time, 2020-08-10 02:26:23 UTC, to its minute


def candles(*rows: list[str], code: str = "0") -> bytes:
    return json.dumps({"code": code, "msg": "", "data": list(rows)}).encode()


# the two rows of OKX's documented example, at M + 1 and M; the newest, M + 2, in progress
NEWEST_UNCONFIRMED = [
    str(M + 2 * MINUTE_MS),
    "3.72",
    "3.73",
    "3.7",
    "3.72",
    "1000",
    "3720",
    "3720",
    "0",
]
DOC_ROW_1 = [
    str(M + MINUTE_MS),
    "3.721",
    "3.743",
    "3.677",
    "3.708",
    "8422410",
    "22698348.04828491",
    "12698348.04828491",
    "1",
]
DOC_ROW_2 = [
    str(M),
    "3.731",
    "3.799",
    "3.494",
    "3.72",
    "24912403",
    "67632347.24399722",
    "37632347.24399722",
    "1",
]


def test_parse_bars_orders_oldest_first_and_skips_the_unconfirmed_newest_row() -> None:
    bars = OKX.parse_bars("BTC-USDT", candles(NEWEST_UNCONFIRMED, DOC_ROW_1, DOC_ROW_2))
    assert bars == [
        Bar("okx", "BTC-USDT", M, 3.731, 3.799, 3.494, 3.72, 24912403.0, 0),
        Bar("okx", "BTC-USDT", M + MINUTE_MS, 3.721, 3.743, 3.677, 3.708, 8422410.0, 0),
    ]
    assert OKX.parse_bars("BTC-USDT", candles(NEWEST_UNCONFIRMED)) == []
    assert OKX.parse_bars("BTC-USDT", candles()) == []


def okx_answer(store: list[list[str]], params: dict[str, str], inclusive: bool) -> bytes:
    """What OKX documents for history-candles: rows between ``before`` and ``after``, newest
    first, the newest ``limit`` of them (exclusive bounds as documented, or inclusive)."""
    after, before, limit = int(params["after"]), int(params["before"]), int(params["limit"])
    if inclusive:
        rows = [r for r in store if before <= int(r[0]) <= after]
    else:
        rows = [r for r in store if before < int(r[0]) < after]
    rows.sort(key=lambda r: -int(r[0]))
    return candles(*rows[:limit])


@pytest.mark.parametrize("inclusive", [False, True], ids=["exclusive", "inclusive"])
def test_paging_newest_first_pages_gives_every_closed_minute_once(inclusive: bool) -> None:
    """200 real minutes served the way OKX serves them, the newest still in progress: the pager
    over the whole range gets the 199 closed ones, oldest first, in two pages."""
    minutes = csv_rows(BYBIT_MINUTES)
    store = [
        [r["open_time_ms"], r["open"], r["high"], r["low"], r["close"], r["volume"], "0", "0", "1"]
        for r in minutes
    ]
    store[-1][8] = "0"
    start, end = int(minutes[0]["open_time_ms"]), int(minutes[-1]["open_time_ms"]) + MINUTE_MS
    pager = RestPager(OKX, "BTC-USDT", start, end)
    bars = serve_pages(pager, lambda params: okx_answer(store, params, inclusive))
    expected = [
        Bar("okx", "BTC-USDT", int(r["open_time_ms"]), float(r["open"]), float(r["high"]),
            float(r["low"]), float(r["close"]), float(r["volume"]), 0)
        for r in minutes[:-1]
    ]  # fmt: skip
    assert bars == expected
    assert pager.pages == 3  # two full pages, then one holding only the unconfirmed minute
