"""Bybit v5 spot ``publicTrade`` and REST ``/v5/market/kline``.

No v5 recording exists in this project. ``bybit_v5_doc.jsonl`` is the documented v5 push
(https://bybit-exchange.github.io/docs/v5/websocket/public/trade). ``bybit_linear_v2.jsonl``
is real, recorded by cryptofeed on ``wss://stream.bybit.com/realtime_public`` (linear perps,
2021), but it is NOT the v5 frame shape: the retired v2 API, ``trade.<symbol>`` topics with
``trade_id`` / ``price`` / ``size`` / ``side`` fields, where v5 has ``publicTrade.<symbol>`` with
``i`` / ``p`` / ``v`` / ``S``. Those frames are where the two disagree, and they win on what
they show: Bybit trade ids are text (UUIDs), not numbers; the parser refuses their shape as
``unsupported_protocol``. ``bybit_spot_BTCUSDT_1m_20221213.csv`` holds 200 real Bybit spot minutes
from which the kline pages are built (tests/fixtures/ws/README.md).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from support.parsers import (
    BYBIT_MINUTES,
    csv_rows,
    recorded_frames,
    serve_pages,
    unsupported_frames,
)

from streamer.core.bars import BarAggregator
from streamer.core.exchanges.bybit import BYBIT, KEEPALIVE_MESSAGE
from streamer.core.paging import RestPager
from streamer.core.types import MINUTE_MS, Bar, Trade

(DOC,) = recorded_frames("bybit_v5_doc.jsonl")


# --- the documented v5 push -----------------------------------------------------------------


def test_documented_push_gives_one_trade_with_a_text_id() -> None:
    assert BYBIT.parse(DOC) == [
        Trade(
            "bybit",
            "BTCUSDT",
            "20f43950-d8dd-5b31-9112-a178eb6023af",
            1672304486865,
            16578.5,
            0.001,
            "buy",
        )
    ]
    assert BYBIT.parse(DOC.decode()) == BYBIT.parse(DOC)


PUSH = json.loads(DOC)


def with_trades(*trades: dict[str, Any]) -> str:
    return json.dumps(PUSH | {"data": list(trades)})


def test_several_trades_of_one_push_keep_their_order_and_sides() -> None:
    first = PUSH["data"][0]
    second = first | {"i": "2290000000090712223", "S": "Sell", "T": 1672304486866, "v": "0.5"}
    trades = [t for t in BYBIT.parse(with_trades(first, second)) if isinstance(t, Trade)]
    assert [(t.trade_id, t.taker_side, t.qty) for t in trades] == [
        ("20f43950-d8dd-5b31-9112-a178eb6023af", "buy", 0.001),
        ("2290000000090712223", "sell", 0.5),
    ]


def test_a_resent_push_is_dropped_by_its_text_id() -> None:
    agg = BarAggregator("bybit")
    for record in [*BYBIT.parse(DOC), *BYBIT.parse(DOC)]:
        assert isinstance(record, Trade)
        agg.add(record)
    assert (agg.accepted, agg.duplicates) == (1, 1)


def test_keepalive_is_the_ping_op() -> None:
    assert json.loads(KEEPALIVE_MESSAGE) == {"op": "ping"}


# --- the recorded v2 frames -----------------------------------------------------------------


def test_recorded_v2_frames_are_refused_as_unsupported_protocol() -> None:
    refused, ignored = unsupported_frames(BYBIT, "bybit_linear_v2.jsonl")
    assert all(json.loads(line)["topic"].startswith("trade.") for line in refused)
    # 66 trade.* frames (101 trades); 16 subscribe acks and 3 orderBookL2_25 frames
    assert (len(refused), len(ignored)) == (66, 19)


def test_recorded_trade_ids_are_text_uuids() -> None:
    """Why Bybit trade ids stay text: every one of the 101 recorded ids is a UUID."""
    ids = [
        trade["trade_id"]
        for line in recorded_frames("bybit_linear_v2.jsonl")
        for trade in json.loads(line).get("data", [])
        if "trade_id" in trade
    ]
    assert len(ids) == len(set(ids)) == 101
    assert all(str(uuid.UUID(i)) == i for i in ids)


# --- connections ----------------------------------------------------------------------------


def test_subscribe_messages_hold_at_most_ten_topics() -> None:
    symbols = [f"C{i}USDT" for i in range(250)]
    plans = BYBIT.connections("ws://127.0.0.1:9", symbols, ["publicTrade"])
    assert [len(p.subscribe) for p in plans] == [10, 10, 5]
    sent = [t for p in plans for m in p.subscribe for t in json.loads(m)["args"]]
    assert sent == [f"publicTrade.{s}" for s in symbols]


# --- REST kline -----------------------------------------------------------------------------

M = 1670889600000  # 2022-12-13 00:00 UTC, the first minute of the CSV


def kline_rows(minutes: list[dict[str, str]]) -> list[list[str]]:
    """Real minutes as kline rows, verbatim tokens; the turnover column is a placeholder."""
    return [
        [m["open_time_ms"], m["open"], m["high"], m["low"], m["close"], m["volume"], "0"]
        for m in minutes
    ]


def kline_body(rows: list[list[str]], code: int = 0) -> bytes:
    result = {"symbol": "BTCUSDT", "category": "spot", "list": rows}
    return json.dumps({"retCode": code, "retMsg": "OK", "result": result, "time": 1}).encode()


def expected_bars(minutes: list[dict[str, str]]) -> list[Bar]:
    return [
        Bar("bybit", "BTCUSDT", int(m["open_time_ms"]), float(m["open"]), float(m["high"]),
            float(m["low"]), float(m["close"]), float(m["volume"]), 0)
        for m in minutes
    ]  # fmt: skip


def test_parse_bars_of_a_newest_first_page_of_real_minutes() -> None:
    minutes = csv_rows(BYBIT_MINUTES)
    bars = BYBIT.parse_bars("BTCUSDT", kline_body(kline_rows(minutes)[::-1]))
    assert len(bars) == 200
    assert bars[0] == Bar("bybit", "BTCUSDT", M, 17208.86, 17212.99, 17205.0, 17205.0, 1.549151, 0)
    assert bars[-1] == Bar(
        "bybit", "BTCUSDT", 1670901540000, 17155.25, 17158.52, 17152.96, 17157.77, 3.404799, 0
    )
    assert bars == expected_bars(minutes)


def bybit_answer(store: list[list[str]], params: dict[str, str], anchor_end: bool) -> bytes:
    """Rows opening in ``[start, end]``, newest first, ``limit`` of them counted from the
    end or from the start (the documentation does not say which end a long range keeps)."""
    start, end, limit = int(params["start"]), int(params["end"]), int(params["limit"])
    rows = sorted((r for r in store if start <= int(r[0]) <= end), key=lambda r: int(r[0]))
    rows = rows[-limit:] if anchor_end else rows[:limit]
    return kline_body(rows[::-1])


@pytest.mark.parametrize("anchor_end", [False, True], ids=["from-start", "from-end"])
def test_paging_gives_every_minute_once(anchor_end: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """200 real minutes in pages of at most 60 (standing in for Bybit's 1000, so that the real
    minutes span several pages): the pager gets each minute once, in order, whichever end of
    the range Bybit keeps."""
    monkeypatch.setattr("streamer.core.exchanges.bybit._MAX_KLINES", 60)
    minutes = csv_rows(BYBIT_MINUTES)
    store = kline_rows(minutes)
    pager = RestPager(BYBIT, "BTCUSDT", M, M + 200 * MINUTE_MS)
    bars = serve_pages(pager, lambda params: bybit_answer(store, params, anchor_end))
    assert bars == expected_bars(minutes)
    assert pager.pages == 4
