"""Coinbase Exchange protocol: real recorded ``matches`` frames, candles, limits.

``coinbase_pro.jsonl`` holds real frames recorded by cryptofeed (every match/last_match of the
recording plus a few subscriptions, ticker and l2update frames); ``coinbase_BTCUSD_1m_20171217.csv``
holds 300 real Coinbase BTC-USD minutes (tests/fixtures/ws/README.md).
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from support.parsers import assert_refused, csv_rows, json_array, recorded_frames

from streamer.core.exchanges.base import FrameError, TradeIdMark
from streamer.core.exchanges.coinbase import COINBASE, iso8601_to_ms
from streamer.core.types import Bar, Trade

FRAMES = recorded_frames("coinbase_pro.jsonl")


# --- real recorded frames -------------------------------------------------------------------


def test_taker_side_is_the_opposite_of_the_maker_side_on_every_frame() -> None:
    for line in FRAMES:
        frame = json.loads(line)
        if frame["type"] in ("match", "last_match"):
            (trade,) = COINBASE.parse(line)
            assert isinstance(trade, Trade)
            assert trade.taker_side != frame["side"]
            assert trade.trade_id == frame["trade_id"]
            assert trade.price == float(frame["price"]) and trade.qty == float(frame["size"])


def test_a_heartbeat_gives_the_products_newest_trade_id() -> None:
    # the documented heartbeat (docs.cdp.coinbase.com; the recordings hold none)
    frame = (
        b'{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD",'
        b'"time":"2014-11-07T08:19:28.464459Z"}'
    )
    assert COINBASE.parse(frame) == [TradeIdMark("BTC-USD", 20, 1415348368464)]
    assert COINBASE.rules.sequential_trade_ids


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b'{"type":"heartbeat","product_id":"BTC-USD","time":"2014-11-07T08:19:28Z"}',
         "missing_field"),
        (b'{"type":"heartbeat","last_trade_id":-1,"product_id":"BTC-USD",'
         b'"time":"2014-11-07T08:19:28Z"}', "bad_value"),
        (b'{"type":"heartbeat","last_trade_id":1,"product_id":"BTC-USD","time":"yesterday"}',
         "bad_value"),
    ],
)  # fmt: skip
def test_bad_heartbeats_are_rejected_with_a_reason(frame: bytes, reason: str) -> None:
    assert_refused(COINBASE.parse, frame, reason)


# --- rejected frames ------------------------------------------------------------------------


def test_error_frame_detail_carries_the_message() -> None:
    with pytest.raises(FrameError, match="BTC-XYZ is not a valid product"):
        COINBASE.parse(
            '{"type":"error","message":"Failed","reason":"BTC-XYZ is not a valid product"}'
        )


# --- timestamps -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2021-04-17T16:43:30.244075Z", 1618677810244),
        ("2021-04-17T16:43:30.244999Z", 1618677810244),  # truncated, never rounded up
        ("2021-04-17T16:43:30.2Z", 1618677810200),
        ("2021-04-17T16:43:30Z", 1618677810000),
        ("2023-09-25T07:49:37.708706123Z", 1695628177708),
        ("2000-02-29T23:59:59.999Z", 951868799999),
        ("1970-01-01T00:00:00.001Z", 1),
    ],
)
def test_iso8601_to_ms(text: str, ms: int) -> None:
    assert iso8601_to_ms(text) == ms


@pytest.mark.parametrize(
    "text",
    [
        "2021-04-17",
        "2021-04-17T16:43:30",
        "2021-04-17 16:43:30.1Z",
        "2021-04-17T16:43:30+00:00",
        "2021-02-29T00:00:00Z",
        "2021-04-17T24:00:00Z",
        "2021-04-17T16:43:3_Z",
        "２021-04-17T16:43:30Z",
        "",
    ],
)
def test_iso8601_to_ms_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError):
        iso8601_to_ms(text)


# --- REST candles ---------------------------------------------------------------------------


def candles_body() -> tuple[bytes, list[dict[str, str]]]:
    """A candles response built from 300 real minutes, newest first as Coinbase sends them;
    the CSV's numeric tokens go into the JSON verbatim."""
    rows = csv_rows("coinbase_BTCUSD_1m_20171217.csv")
    body = json_array(
        f"[{int(r['open_time_ms']) // 1000},{r['low']},{r['high']},{r['open']},{r['close']},"
        f"{r['volume']}]"
        for r in reversed(rows)
    )
    return body, rows


def test_parse_bars_on_real_candles() -> None:
    body, rows = candles_body()
    bars = COINBASE.parse_bars("BTC-USD", body)

    assert len(bars) == 300
    assert bars[0] == Bar(
        "coinbase", "BTC-USD", 1513468800000, 19650.02, 19650.02, 19505.0, 19516.96, 61.34020731, 0
    )
    assert bars[-1] == Bar(
        "coinbase", "BTC-USD", 1513486740000, 19350.0, 19369.42, 19350.0, 19369.42, 5.32918986, 0
    )
    assert [b.open_time_ms for b in bars] == sorted(b.open_time_ms for b in bars)
    assert sum(Decimal(repr(b.volume)) for b in bars) == sum(Decimal(r["volume"]) for r in rows)
    assert {b.trades for b in bars} == {0}  # Coinbase candles carry no trade count
