"""The replay exchange over real loopback sockets: Binance protocol, exact data, no future, faults.

Expected values come from reading the bundled CSVs here, independently of
``streamer.replay.data``; bars are rebuilt with a small local aggregator.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import io
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.waits import wait_until
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidStatus,
)

from streamer.replay import Faults, ReplayServer
from streamer.replay.cli import add_arguments, parse_data_time, serve_from_args
from streamer.replay.data import DATA_DIR

pytestmark = pytest.mark.integration

MINUTE = 60_000
SPOT_TRADES = DATA_DIR / "BTCUSDT_trades_20210108_000000-000046.csv.gz"
PERP_TRADES = DATA_DIR / "BTCUSDT_trades_20200222_0000-0205_tardis.csv.gz"
KLINES = {
    s: DATA_DIR / f"{s}_1m_20230427_20230501.csv.gz" for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")
}


def connect(url: str) -> ws_connect:
    """A client that never stops reading: websockets pauses reading once ``max_queue`` frames
    are unread, and a client closing in that state waits its whole close_timeout for our
    close frame."""
    return ws_connect(url, max_queue=None)


def read_csv(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(io.StringIO(f.read())))


def aggregate(trades: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Minute bars from Binance trade events, the way a client builds them."""
    bars: dict[int, dict[str, Any]] = {}
    for t in trades:
        minute = t["T"] - t["T"] % MINUTE
        price, qty = float(t["p"]), float(t["q"])
        bar = bars.get(minute)
        if bar is None:
            bars[minute] = {"o": price, "h": price, "l": price, "c": price, "qtys": [qty]}
        else:
            bar["h"], bar["l"], bar["c"] = max(bar["h"], price), min(bar["l"], price), price
            bar["qtys"].append(qty)
    return bars


async def recv(ws: ClientConnection) -> Any:
    async with asyncio.timeout(5):
        return json.loads(await ws.recv())


async def send_paced(ws: ClientConnection, text: str) -> None:
    """Send as a polite client does: at most 4 messages a second, under Binance's limit of 5
    (the replay closes a connection that sends more, as Binance does)."""
    await asyncio.sleep(0.25)
    await ws.send(text)


async def recv_n(ws: ClientConnection, n: int) -> list[Any]:
    return [await recv(ws) for _ in range(n)]


async def get(session: aiohttp.ClientSession, url: str, **params: Any) -> tuple[int, Any]:
    async with session.get(url, params={k: str(v) for k, v in params.items()}) as response:
        return response.status, await response.json(content_type=None)


async def test_raw_stream_sends_the_recorded_trades_exactly() -> None:
    rows = read_csv(SPOT_TRADES)
    async with ReplayServer([SPOT_TRADES]) as server:
        assert server.ws_url.startswith("ws://127.0.0.1:")
        async with connect(f"{server.ws_url}/ws/btcusdt@trade") as ws:
            events = await recv_n(ws, len(rows))
            await server.wait_finished()
    for row, event in zip(rows, events, strict=True):
        ts = int(row["timestamp_ms"])
        assert event == {
            "e": "trade",
            "E": ts,
            "s": "BTCUSDT",
            "t": int(row["trade_id"]),
            "p": row["price"],
            "q": row["qty"],
            "T": ts,
            "m": row["is_buyer_maker"] == "true",
            "M": True,
        }
    assert server.sent.trades["BTCUSDT"] == len(rows) == server.sent.messages
    assert server.sent.volume("BTCUSDT") == math.fsum(float(r["qty"]) for r in rows)
    assert server.clock_ms() == server.end_ms


async def test_combined_stream_aggtrades_then_closed_klines_in_order() -> None:
    rows = read_csv(PERP_TRADES)
    async with ReplayServer([PERP_TRADES]) as server, connect(f"{server.ws_url}/stream") as ws:
        request = {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade", "btcusdt@kline_1m"]}
        await ws.send(json.dumps({**request, "id": 1}))
        assert await recv(ws) == {"result": None, "id": 1}
        minutes = {int(r["timestamp_ms"]) // MINUTE for r in rows}
        n_minutes = max(minutes) - min(minutes) + 1  # every minute closes, empty ones too
        messages = await recv_n(ws, len(rows) + n_minutes)
        await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
        assert await recv(ws) == {"result": ["btcusdt@aggTrade", "btcusdt@kline_1m"], "id": 2}
    trades = [m["data"] for m in messages if m["stream"] == "btcusdt@aggTrade"]
    klines = [m["data"] for m in messages if m["stream"] == "btcusdt@kline_1m"]
    assert [(t["a"], t["f"], t["l"], t["p"], t["q"], t["T"]) for t in trades] == [
        (int(r["trade_id"]),) * 3 + (r["price"], r["qty"], int(r["timestamp_ms"])) for r in rows
    ]
    # a minute's closed kline comes after all its trades and before the next minute's
    closed_at: dict[int, int] = {}
    for position, message in enumerate(messages):
        data = message["data"]
        if data["e"] == "kline":
            closed_at[data["k"]["t"]] = position
        else:
            assert data["T"] - data["T"] % MINUTE not in closed_at
    bars = aggregate(trades)
    previous_close = None
    for kline in klines:
        k = kline["k"]
        assert (k["x"], k["i"], k["s"], k["T"]) == (True, "1m", "BTCUSDT", k["t"] + MINUTE - 1)
        assert kline["E"] == k["t"] + MINUTE
        bar = bars.get(k["t"])
        if bar is None:  # no trades: flat at the previous close, as Binance serves it
            assert (k["n"], float(k["v"]), k["f"], k["L"]) == (0, 0.0, -1, -1)
            assert k["o"] == k["h"] == k["l"] == k["c"] == previous_close
        else:
            assert [float(k[x]) for x in "ohlc"] == [bar[x] for x in "ohlc"]
            assert (k["n"], float(k["v"])) == (len(bar["qtys"]), math.fsum(bar["qtys"]))
        previous_close = k["c"]
    assert len(klines) == n_minutes


async def test_raw_ws_subscribe_unsubscribe_and_errors() -> None:
    async with ReplayServer([KLINES["SOLUSDT"]]) as server, connect(f"{server.ws_url}/ws") as ws:
        await send_paced(ws, "not json")
        assert (await recv(ws))["error"]["code"] == 3
        await send_paced(ws, json.dumps({"method": "NOPE", "id": 7}))
        assert (await recv(ws))["error"]["code"] == 2
        await send_paced(
            ws, json.dumps({"method": "GET_PROPERTY", "params": ["combined"], "id": 8})
        )
        assert await recv(ws) == {"result": False, "id": 8}
        assert server.clock_ms() == server.start_ms  # held until the first subscription
        await send_paced(
            ws, json.dumps({"method": "SUBSCRIBE", "params": ["solusdt@trade"], "id": 1})
        )
        assert await recv(ws) == {"result": None, "id": 1}
        first = await recv_n(ws, 8)  # raw stream: bare events
        await send_paced(
            ws, json.dumps({"method": "UNSUBSCRIBE", "params": ["solusdt@trade"], "id": 2})
        )
        while (message := await recv(ws)).get("id") != 2:
            assert message["e"] == "trade"  # frames queued before the request, then the reply
        await send_paced(ws, json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
        assert await recv(ws) == {"result": [], "id": 3}  # nothing after the unsubscribe
    source = read_csv(KLINES["SOLUSDT"])[:2]
    assert [e["p"] for e in first] == [
        source[i // 4][("open", "high", "low", "close")[i % 4]] for i in range(8)
    ]
    assert [e["t"] for e in first] == list(range(first[0]["t"], first[0]["t"] + 8))
    assert first[0]["t"] == int(source[0]["open_time_ms"]) // MINUTE * 4


async def test_synthesized_trades_rebuild_the_source_klines_of_merged_symbols() -> None:
    sources = {s: read_csv(p)[-300:] for s, p in KLINES.items()}  # the last 5 hours
    start = int(sources["BTCUSDT"][0]["open_time_ms"])
    expected = sum(4 * sum(float(r["volume"]) > 0 for r in rows) for rows in sources.values())
    streams = "/".join(f"{s.lower()}@trade" for s in sources)
    async with ReplayServer(list(KLINES.values()), start_ms=start) as server:
        async with connect(f"{server.ws_url}/stream?streams={streams}") as ws:
            messages = await recv_n(ws, expected)
        await server.wait_finished()
    times = [m["data"]["T"] for m in messages]
    assert times == sorted(times)  # the symbols are merged by data time
    for symbol, rows in sources.items():
        trades = [m["data"] for m in messages if m["data"]["s"] == symbol]
        ids = [t["t"] for t in trades]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        bars = aggregate(trades)
        assert sorted(bars) == [int(r["open_time_ms"]) for r in rows]
        for row in rows:
            bar = bars[int(row["open_time_ms"])]
            assert [bar[x] for x in "ohlc"] == [
                float(row[x]) for x in ("open", "high", "low", "close")
            ]
            naive = 0.0
            for qty in bar["qtys"]:
                naive += qty
            assert naive == math.fsum(bar["qtys"]) == float(row["volume"])  # exactly, both ways
            assert min(bar["qtys"]) > 0
            sent_count, sent_volume = server.sent.minutes(symbol)[int(row["open_time_ms"])]
            assert (sent_count, sent_volume) == (4, float(row["volume"]))


async def test_rest_klines_serve_the_source_and_only_closed_minutes() -> None:
    rows = read_csv(KLINES["BTCUSDT"])
    first = int(rows[0]["open_time_ms"])
    start = first + 100 * MINUTE
    async with ReplayServer([KLINES["BTCUSDT"]], start_ms=start) as server:
        url = f"{server.rest_url}/api/v3/klines"
        async with aiohttp.ClientSession() as http:
            status, body = await get(http, url, symbol="BTCUSDT", interval="1m", startTime=0)
            assert status == 200 and len(body) == 100  # history before the start, no more
            for row, kline in zip(rows, body, strict=False):
                t = int(row["open_time_ms"])
                assert kline[:7] == [t, row["open"], row["high"], row["low"], row["close"],
                                     row["volume"], t + MINUTE - 1]  # fmt: skip
                assert kline[8] == 4 and kline[11] == "0"
            assert await get(http, f"{server.rest_url}/api/v3/time") == (
                200,
                {"serverTime": start},
            )
            _, page = await get(
                http, url, symbol="BTCUSDT", interval="1m", startTime=first + 1,
                endTime=first + 10 * MINUTE, limit=3,
            )  # fmt: skip
            assert [k[0] for k in page] == [first + MINUTE * i for i in (1, 2, 3)]
            _, page = await get(
                http, url, symbol="BTCUSDT", interval="1m", endTime=first + 9 * MINUTE, limit=5
            )
            assert [k[0] for k in page] == [
                first + MINUTE * i for i in range(5, 10)
            ]  # endTime inclusive
            _, page = await get(http, url, symbol="BTCUSDT", interval="1m")
            assert [k[0] for k in page] == [first + MINUTE * i for i in range(100)]
            for params, code in (
                ({"symbol": "DOGEUSDT", "interval": "1m"}, -1121),
                ({"interval": "1m"}, -1102),
                ({"symbol": "BTCUSDT", "interval": "5m"}, -1120),
                ({"symbol": "BTCUSDT", "interval": "1m", "limit": 1001}, -1130),
                ({"symbol": "BTCUSDT", "interval": "1m", "startTime": "x"}, -1100),
            ):
                status, error = await get(http, url, **params)
                assert (status, error["code"]) == (400, code)
            assert await get(http, f"{server.rest_url}/api/v3/ping") == (200, {})

            # while streaming, REST never serves a minute the replay clock has not closed
            async with connect(f"{server.ws_url}/ws/btcusdt@kline_1m") as ws:
                for _ in range(20):
                    for _ in range(50):
                        await recv(ws)
                    _, before = await get(http, f"{server.rest_url}/api/v3/time")
                    _, page = await get(http, url, symbol="BTCUSDT", interval="1m", limit=1000)
                    _, after = await get(http, f"{server.rest_url}/api/v3/time")
                    newest_open = page[-1][0]
                    assert newest_open + MINUTE <= after["serverTime"]
                    assert newest_open + MINUTE > before["serverTime"] - MINUTE
                    row = rows[(newest_open - first) // MINUTE]
                    assert page[-1][1:6] == [
                        row[x] for x in ("open", "high", "low", "close", "volume")
                    ]


async def test_speed_factor_drives_the_replay_clock() -> None:
    speed = 1200.0  # 20 data minutes per second
    async with ReplayServer([KLINES["ETHUSDT"]], speed) as server:
        await asyncio.sleep(0.05)
        assert server.clock_ms() == server.start_ms  # nobody subscribed yet: the clock holds
        before_subscribing = time.monotonic()
        async with connect(f"{server.ws_url}/ws/ethusdt@trade") as ws:
            event = await recv(ws)
            clock0, wall0 = server.clock_ms(), time.monotonic()
            assert event["T"] <= clock0 + 1  # never ahead of the clock (it may trail by 1 ms)
            await wait_until(lambda: server.clock_ms() >= clock0 + 10 * MINUTE, 5, "10 minutes")
            clock1, wall1 = server.clock_ms(), time.monotonic()
            # never faster than the speed factor, and not much slower on a busy machine
            assert clock1 - server.start_ms <= speed * (wall1 - before_subscribing) * 1000
            assert clock1 - clock0 >= 0.5 * speed * (wall1 - wall0) * 1000
            event = await recv(ws)
            assert event["T"] <= server.clock_ms() + 1
    assert server.clock_ms() < server.end_ms


async def test_loop_repeats_the_data_shifted_in_time_and_ids() -> None:
    rows = read_csv(SPOT_TRADES)
    async with ReplayServer([SPOT_TRADES], loop=True) as server:
        async with connect(f"{server.ws_url}/ws/btcusdt@trade") as ws:
            events = await recv_n(ws, 2 * len(rows) + 1)
        assert server.span_ms == MINUTE
        async with aiohttp.ClientSession() as http:
            _, page = await get(http, f"{server.rest_url}/api/v3/klines", symbol="BTCUSDT",
                                interval="1m", startTime=0, limit=2)  # fmt: skip
    lap0, lap1 = events[: len(rows)], events[len(rows) : 2 * len(rows)]
    for a, b in zip(lap0, lap1, strict=True):
        assert (b["T"] - a["T"], b["t"] - a["t"], b["p"], b["q"]) == (
            MINUTE,
            len(rows),
            a["p"],
            a["q"],
        )
    assert page[1][0] == page[0][0] + MINUTE and page[1][1:6] == page[0][1:6]
    assert page[1][8] == len(rows)


async def test_drop_after_messages_without_close_frame_then_refuse() -> None:
    faults = Faults(drop_after_messages=50, refuse_after_drop_s=0.3)
    # 10 data minutes per second: data is left to stream after the reconnect
    async with ReplayServer([PERP_TRADES], 600, faults=faults) as server:
        async with connect(f"{server.ws_url}/ws/btcusdt@trade") as ws:
            events = await recv_n(ws, 50)
            with pytest.raises(ConnectionClosedError) as closed:
                await recv(ws)
            assert closed.value.rcvd is None  # TCP closed with no close frame
        assert [e["t"] for e in events] == list(range(events[0]["t"], events[0]["t"] + 50))
        assert (server.sent.messages, server.sent.drops) == (50, 1)
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{server.ws_url}/ws/btcusdt@trade"):
                pass
        assert refused.value.response.status_code == 503
        assert server.sent.refused == 1
        deadline = time.monotonic() + 5
        while True:  # the refusal ends after refuse_after_drop_s
            try:
                async with connect(f"{server.ws_url}/ws/btcusdt@trade") as ws:
                    resumed = await recv(ws)
                    break
            except InvalidStatus:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    assert resumed["t"] > events[-1]["t"]  # the stream went on: what was missed is gone


async def test_drop_at_data_time_with_close_frame() -> None:
    rows = read_csv(PERP_TRADES)
    drop_at = int(rows[0]["timestamp_ms"]) // MINUTE * MINUTE + 3 * MINUTE
    faults = Faults(drop_at_ms=drop_at, drop_with_close_frame=True)
    before = [r for r in rows if int(r["timestamp_ms"]) < drop_at]
    async with (
        ReplayServer([PERP_TRADES], faults=faults) as server,
        connect(f"{server.ws_url}/ws/btcusdt@trade") as ws,
    ):
        events = await recv_n(ws, len(before))
        with pytest.raises(ConnectionClosedOK) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert [e["t"] for e in events] == [int(r["trade_id"]) for r in before]
    assert faults.drop_at_ms is None  # one-shot


async def test_stall_keeps_the_socket_open_but_sends_nothing() -> None:
    speed = 6000.0  # 100 data minutes per second: the replay moves on during the stall
    faults = Faults(stall_after_messages=10, stall_s=0.5)
    async with (
        ReplayServer([KLINES["BTCUSDT"]], speed, faults=faults) as server,
        connect(f"{server.ws_url}/ws/btcusdt@trade") as ws,
    ):
        events = await recv_n(ws, 10)
        wall = time.monotonic()
        resumed = await recv(ws)
        silent_s = time.monotonic() - wall
    assert silent_s >= 0.4
    assert server.sent.skipped_stalled > 0
    # the data time the stall skipped, by the replay clock
    assert resumed["T"] - events[-1]["T"] >= 0.4 * speed * 1000
    assert resumed["t"] > events[-1]["t"] + 1


async def test_malformed_frames_are_inserted_and_the_good_ones_all_arrive() -> None:
    rows = read_csv(SPOT_TRADES)
    faults = Faults(malformed_every=7)
    async with (
        ReplayServer([SPOT_TRADES], faults=faults) as server,
        connect(f"{server.ws_url}/ws/btcusdt@trade") as ws,
    ):
        good: list[dict[str, Any]] = []
        bad: defaultdict[str, int] = defaultdict(int)
        while len(good) < len(rows):
            async with asyncio.timeout(5):
                frame = await ws.recv()
            try:
                event = json.loads(frame)
            except ValueError:
                bad["invalid json"] += 1
                continue
            if not isinstance(event["p"], str):
                bad["wrong types"] += 1
            elif not math.isfinite(float(event["p"])):
                bad["nan price"] += 1
            else:
                good.append(event)
    assert [(e["t"], e["p"], e["q"]) for e in good] == [
        (int(r["trade_id"]), r["price"], r["qty"]) for r in rows
    ]
    assert sum(bad.values()) == server.sent.malformed == len(rows) // 7
    assert set(bad) == {"invalid json", "wrong types", "nan price"}


async def test_rest_throttling_429_then_418_with_retry_after() -> None:
    faults = Faults(rest_429=1, rest_418=2, retry_after_s=3)
    async with ReplayServer([KLINES["BTCUSDT"]], faults=faults) as server:
        url = f"{server.rest_url}/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1"
        async with aiohttp.ClientSession() as http:
            answers = []
            for _ in range(4):
                async with http.get(url) as response:
                    answers.append((response.status, response.headers.get("Retry-After")))
    assert answers == [(429, "3"), (418, "3"), (418, "3"), (200, None)]
    assert server.sent.rest_throttled == 3


async def test_refuse_connections_answers_503() -> None:
    async with ReplayServer([KLINES["BTCUSDT"]]) as server:
        server.refuse_connections(10)
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{server.ws_url}/stream?streams=btcusdt@trade"):
                pass
        assert refused.value.response.status_code == 503
        server.refuse_connections(0)
        async with connect(f"{server.ws_url}/stream?streams=btcusdt@trade") as ws:
            assert (await recv(ws))["stream"] == "btcusdt@trade"
        with pytest.raises(InvalidStatus) as unknown:
            async with connect(f"{server.ws_url}/nope"):
                pass
        assert unknown.value.response.status_code == 404


async def test_command_line_options_run_the_server_to_the_end() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--source",
            f"XBT={SPOT_TRADES}",
            "--speed",
            "max",
            "--port",
            "0",
            "--rest-port",
            "0",
            "--no-wait",
            "--exit-when-done",
            "--malformed-every",
            "5",
        ]
    )
    assert (args.speed, args.host, args.malformed_every) == (0.0, "127.0.0.1", 5)
    await asyncio.wait_for(serve_from_args(args), 10)
    first = 1_610_064_000_000
    assert parse_data_time("+90", first) == first + 90 * MINUTE
    assert parse_data_time("2021-01-08T00:01:00Z", first) == first + MINUTE
    assert parse_data_time(str(first), 0) == first


async def test_rest_log_and_connection_attempts_record_every_request() -> None:
    async with ReplayServer([KLINES["BTCUSDT"]], faults=Faults(rest_429=1)) as server:
        assert server.rest_url != server.ws_url.replace("ws://", "http://")  # REST: own port
        klines = "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1"
        before = time.monotonic()
        async with aiohttp.ClientSession() as http:
            for path in ("/api/v3/ping", klines, klines, "/nope"):
                async with http.get(f"{server.rest_url}{path}"):
                    pass
            # the WebSocket port answers plain HTTP with 426 and logs nothing
            async with http.get(f"{server.ws_url.replace('ws://', 'http://')}/api/v3/ping") as r:
                assert r.status == 426
        after = time.monotonic()
        assert [(e.path, e.status) for e in server.rest_log] == [
            ("/api/v3/ping", 200),
            ("/api/v3/klines", 429),
            ("/api/v3/klines", 200),
            ("/nope", 404),
        ]
        arrivals = [e.arrived for e in server.rest_log]
        assert before <= arrivals[0] and arrivals == sorted(arrivals) and arrivals[-1] <= after
        assert server.sent.rest_requests == 4

        server.refuse_connections(10)
        with pytest.raises(InvalidStatus):
            async with connect(f"{server.ws_url}/ws/btcusdt@trade"):
                pass
        server.refuse_connections(0)
        with pytest.raises(InvalidStatus):
            async with connect(f"{server.ws_url}/nope"):
                pass
        async with connect(f"{server.ws_url}/ws/btcusdt@trade") as ws:
            await recv(ws)
        attempts = server.connection_attempts
        assert len(attempts) == 3 and attempts == sorted(attempts)  # refused and 404 too
        assert after <= attempts[0] and attempts[-1] <= time.monotonic()
        assert (server.sent.refused, server.sent.connections) == (1, 1)


# ---- what Binance enforces ------------------------------------------------------------------


async def test_a_client_sending_more_than_5_messages_a_second_pings_included_is_closed() -> None:
    async with ReplayServer([KLINES["SOLUSDT"]]) as server:
        async with ws_connect(f"{server.ws_url}/ws", ping_interval=None) as ws:
            for n in range(3):
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": n}))
                await ws.ping()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert server.rate_limit_closes == 1


async def test_connections_are_cut_at_the_venues_age_limit() -> None:
    async with ReplayServer([KLINES["SOLUSDT"]], connection_age_s=0.5) as server:
        async with connect(f"{server.ws_url}/ws") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        assert server.age_cuts == 1


async def test_a_shutdown_notice_comes_before_the_close() -> None:
    async with ReplayServer([KLINES["SOLUSDT"]]) as server:
        async with connect(f"{server.ws_url}/ws") as ws:
            await wait_until(lambda: server.connection_count == 1, 5, "the connection")
            await server.announce_shutdown(close_after_s=0.3)
            notice = await recv(ws)
            assert notice["e"] == "serverShutdown" and notice["E"] == server.clock_ms()
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


async def test_rest_answers_report_the_weight_used_and_refuse_past_the_limit() -> None:
    if time.time() % 60 > 50:  # the weight is counted per wall-clock minute: start in one
        await asyncio.sleep(61 - time.time() % 60)
    source = KLINES["SOLUSDT"]
    async with (
        ReplayServer([source]) as server,
        aiohttp.ClientSession() as session,
    ):
        assert server.weight is not None
        url = f"{server.rest_url}/api/v3/klines?symbol=SOLUSDT&interval=1m&limit=5"
        async with session.get(url) as first:
            assert first.status == 200 and first.headers["X-MBX-USED-WEIGHT-1M"] == "2"
        server.weight.used = {int(time.time() // 60): 5999}  # as if others used the rest
        async with session.get(url) as refused:
            assert refused.status == 429
            assert refused.headers["X-MBX-USED-WEIGHT-1M"] == "5999"
            assert 0 < int(refused.headers["Retry-After"]) <= 60
