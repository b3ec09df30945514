"""Bar window store against a real redis-server (and MemoryBarStore, which must agree with it).

Bars are real: 1-minute OHLCV plus trade counts aggregated from recorded trades: Binance USD-M
BTCUSDT (tardis.dev, 2020-02-22 00:00-00:11 UTC; tests/support/bars.py), Binance ETHUSDT
(freqtrade test data, 2023-02-02 09:20-09:22 UTC) and Kraken XBTUSDT (nautilus_trader test
data, 2025-11-10 17:23-17:27 UTC, minutes without trades absent; the trades are
streamer/replay/data/BTC-USDT_trades_20251110_1723-20251111_0013_kraken.csv.gz). The "partial"
bars aggregate only the first 30 s and 15 s of their minute: what a feed that dropped
mid-minute would have closed as incomplete.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable
from typing import Protocol

import msgspec
import pytest
import redis.asyncio as aioredis
from support.bars import BTC, Row, bars
from support.waits import wait_until

from streamer.core.contracts.redis_bars import encode_bar, incomplete_key
from streamer.core.retry import RetryPolicy
from streamer.core.types import Bar
from streamer.io.store import (
    BarStore,
    BufferedBarWriter,
    MemoryBarStore,
    RedisBarStore,
    StoreRejected,
    StoreUnavailable,
)

ETH_ROWS: list[Row] = [
    (1675329600000, 1666.8, 1667.25, 1666.68, 1667.23, 931.486, 265),
    (1675329660000, 1667.23, 1667.28, 1667.0, 1667.27, 1390.166, 193),
    (1675329720000, 1667.27, 1667.28, 1666.21, 1666.73, 2249.229, 326),
]
BTC_PARTIAL_ROWS: list[Row] = [  # the first 30 s and 15 s of BTC minutes 1 and 5
    (1582329660000, 9681.93, 9683.5, 9678.59, 9678.59, 25.384, 56),
    (1582329900000, 9670.28, 9671.49, 9669.5, 9669.5, 5.347, 22),
]
KRAKEN_ROWS: list[Row] = [
    (1762795380000, 105433.6, 105433.6, 105433.6, 105433.6, 0.00027625, 1),
    (1762795440000, 105410.1, 105410.1, 105351.1, 105351.1, 0.0095537, 5),
    (1762795560000, 105413.7, 105413.7, 105413.7, 105413.7, 1.00229159, 13),
    (1762795620000, 105413.6, 105413.6, 105413.6, 105413.6, 0.019, 2),
]
BTC_PARTIAL = bars("binance", "BTCUSDT", BTC_PARTIAL_ROWS, complete=False)
ETH = bars("binance", "ETHUSDT", ETH_ROWS)
KRAKEN = bars("kraken", "BTC-USDT", KRAKEN_ROWS)


class Server(Protocol):
    """The conftest ``redis_server`` fixture: a real redis-server we may stop and start."""

    url: str
    port: int

    def stop(self, kill: bool = False) -> None: ...

    def start(self) -> None: ...


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CAP = 5


def incomplete(bar: Bar) -> Bar:
    return msgspec.structs.replace(bar, complete=False)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BarStore]:
    """Each semantic test runs against both stores: MemoryBarStore must behave like Redis."""
    bar_store: BarStore
    if request.param == "memory":
        bar_store = MemoryBarStore(cap=CAP)
    else:
        server: Server = request.getfixturevalue("redis_server")
        bar_store = RedisBarStore.from_url(server.url, cap=CAP)
    yield bar_store
    await bar_store.close()


@pytest.fixture
async def raw_redis(redis_server: Server) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


# --- semantics shared by both stores ---


async def test_write_round_of_several_symbols(store: BarStore) -> None:
    await store.write([BTC[0], ETH[0], KRAKEN[0], BTC[1], ETH[1], KRAKEN[1], BTC[2]])
    assert await store.load("binance", "BTCUSDT", 10) == BTC[0:3]
    assert await store.load("binance", "ETHUSDT", 10) == ETH[0:2]
    assert await store.load("kraken", "BTC-USDT", 10) == KRAKEN[0:2]


async def test_write_appends_only_newer_bars_so_a_retried_round_adds_nothing(
    store: BarStore,
) -> None:
    round_1 = [BTC[0], BTC[1], ETH[0]]
    round_2 = [BTC[2], ETH[1], ETH[2]]
    await store.write(round_1)
    await store.write(round_2)
    await store.write(round_2)  # retried after a timeout, although it had been applied
    await store.write(round_1 + round_2)
    assert await store.load("binance", "BTCUSDT", 10) == BTC[0:3]
    assert await store.load("binance", "ETHUSDT", 10) == ETH


async def test_write_sorts_a_round_and_keeps_the_last_of_equal_open_times(
    store: BarStore,
) -> None:
    await store.write([BTC[3], BTC[1], BTC_PARTIAL[0], BTC[2]])
    assert await store.load("binance", "BTCUSDT", 10) == [BTC_PARTIAL[0], BTC[2], BTC[3]]


async def test_write_caps_each_window_to_the_newest_bars(store: BarStore) -> None:
    await store.write(BTC[0:3] + ETH[0:1])
    await store.write(BTC[3:9])
    assert await store.load("binance", "BTCUSDT", 100) == BTC[4:9]
    assert await store.load("binance", "ETHUSDT", 100) == ETH[0:1]


async def test_load_returns_newest_count_oldest_first(store: BarStore) -> None:
    await store.write(BTC[0:4])
    assert await store.load("binance", "BTCUSDT", 2) == BTC[2:4]
    assert await store.load("binance", "BTCUSDT", 0) == []
    assert await store.load("binance", "SOLUSDT", 5) == []


async def test_load_restores_incomplete_flags(store: BarStore) -> None:
    await store.write([BTC[0], BTC_PARTIAL[0], BTC[2]])
    loaded = await store.load("binance", "BTCUSDT", 10)
    assert loaded == [BTC[0], BTC_PARTIAL[0], BTC[2]]
    assert [bar.complete for bar in loaded] == [True, False, True]


async def test_repair_replaces_incomplete_bars_and_fills_gaps(store: BarStore) -> None:
    # Minute 1 closed incomplete, minutes 3 and 4 missing (feed down), minute 5 incomplete.
    await store.write([BTC[0], BTC_PARTIAL[0], BTC[2], BTC_PARTIAL[1]])
    await store.repair([BTC[5], BTC[1], BTC[3], BTC[4]])
    assert await store.load("binance", "BTCUSDT", 10) == BTC[1:6]  # cap 5 drops BTC[0]
    await store.write([BTC[5], BTC[6]])  # the live feed carries on after the repair
    assert await store.load("binance", "BTCUSDT", 10) == BTC[2:7]


async def test_repair_of_bars_older_than_a_full_window_changes_nothing(store: BarStore) -> None:
    await store.write(BTC[3:8])
    await store.repair(BTC[0:2])
    assert await store.load("binance", "BTCUSDT", 10) == BTC[3:8]


async def test_repair_of_an_empty_window_and_with_incomplete_backfill(store: BarStore) -> None:
    await store.repair([KRAKEN[2], KRAKEN[0], incomplete(KRAKEN[1])])
    assert await store.load("kraken", "BTC-USDT", 10) == [
        KRAKEN[0],
        incomplete(KRAKEN[1]),
        KRAKEN[2],
    ]
    await store.repair([KRAKEN[1]])
    assert await store.load("kraken", "BTC-USDT", 10) == KRAKEN[0:3]


async def test_incomplete_marks_leave_with_their_bars(store: BarStore) -> None:
    await store.write([BTC_PARTIAL[0]])
    await store.write(BTC[2:7])  # the partial bar falls off the capped window
    await store.repair([BTC[1]])  # older than the window: trimmed away again
    assert await store.load("binance", "BTCUSDT", 10) == BTC[2:7]


# --- Redis specifics: the stored format, round trips, keys ---


def stored_row(bar: Bar) -> list[float | int]:
    return [bar.open_time_ms, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades]


@pytest.mark.integration
async def test_redis_lists_hold_compact_json_arrays_per_design(
    redis_server: Server, raw_redis: aioredis.Redis
) -> None:
    store = RedisBarStore.from_url(redis_server.url, cap=CAP)
    await store.write([BTC[0], ETH[0], BTC_PARTIAL[0], ETH[1], KRAKEN[0]])
    await store.write(BTC[2:7])
    await store.close()

    raw_btc = await raw_redis.lrange("tickcast:bars:binance:BTCUSDT", 0, -1)
    assert [json.loads(raw) for raw in raw_btc] == [stored_row(bar) for bar in BTC[2:7]]
    raw_eth = await raw_redis.lrange("tickcast:bars:binance:ETHUSDT", 0, -1)
    assert [json.loads(raw) for raw in raw_eth] == [stored_row(bar) for bar in ETH[0:2]]
    assert raw_eth[0] == b"[1675329600000,1666.8,1667.25,1666.68,1667.23,931.486,265]"
    raw_kraken = await raw_redis.lrange("tickcast:bars:kraken:BTC-USDT", 0, -1)
    assert [json.loads(raw) for raw in raw_kraken] == [stored_row(KRAKEN[0])]
    assert sorted(await raw_redis.keys("tickcast:bars:*")) == [
        b"tickcast:bars:binance:BTCUSDT",
        b"tickcast:bars:binance:ETHUSDT",
        b"tickcast:bars:kraken:BTC-USDT",
    ]


@pytest.mark.integration
async def test_redis_incomplete_set_tracks_open_times_until_repair(
    redis_server: Server, raw_redis: aioredis.Redis
) -> None:
    store = RedisBarStore.from_url(redis_server.url, cap=CAP)
    await store.write([BTC[0], BTC_PARTIAL[0], BTC[2], BTC_PARTIAL[1]])
    key = incomplete_key("binance", "BTCUSDT")
    assert key == "tickcast:incomplete:binance:BTCUSDT"
    assert await raw_redis.zrange(key, 0, -1, withscores=True) == [
        (b"1582329660000", 1582329660000.0),
        (b"1582329900000", 1582329900000.0),
    ]
    await store.repair([BTC[1]])
    assert await raw_redis.zrange(key, 0, -1) == [b"1582329900000"]
    await store.repair([BTC[5], BTC[3], BTC[4]])
    assert await raw_redis.exists(key) == 0

    await store.write([incomplete(BTC[6])])
    await store.write(BTC[7:11])  # still in the window: [6 (incomplete), 7, 8, 9, 10]
    assert await raw_redis.zrange(key, 0, -1) == [b"1582329960000"]
    await store.write([incomplete(BTC[11])])  # minute 6 falls off; its mark goes with this ZADD
    assert await raw_redis.zrange(key, 0, -1) == [b"1582330260000"]
    loaded = await store.load("binance", "BTCUSDT", 10)
    assert loaded == [*BTC[7:11], incomplete(BTC[11])]
    await store.close()


async def command_calls(client: aioredis.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def calls_during(client: aioredis.Redis, action: Awaitable[None]) -> dict[str, int]:
    """Commands Redis executed while ``action`` ran, INFO itself left out.

    Commands a script runs are counted like requests; the exact set shows that nothing but the
    one EVALSHA (and the commands inside it) was sent.
    """
    before = await command_calls(client)
    await action
    after = await command_calls(client)
    delta = {name: n - before.get(name, 0) for name, n in after.items()}
    return {name: n for name, n in delta.items() if n and name != "info"}


@pytest.mark.integration
async def test_one_round_trip_per_write_round_and_eval_fallback_on_noscript(
    redis_server: Server, raw_redis: aioredis.Redis
) -> None:
    store = RedisBarStore.from_url(redis_server.url, cap=CAP)
    assert await store.ping()  # connection set-up (HELLO) out of the way
    # Empty script cache: the EVALSHA fails with NOSCRIPT and an EVAL runs (and caches) it.
    first = await calls_during(raw_redis, store.write([BTC[0], ETH[0]]))
    assert first == {"evalsha": 1, "eval": 1, "lindex": 2, "rpush": 2}

    round_ = [BTC[1], ETH[1], KRAKEN[0], BTC_PARTIAL[1], KRAKEN[1], BTC[2]]
    second = await calls_during(raw_redis, store.write(round_))
    # BTC got an incomplete bar: ZADD, then LINDEX of the first bar to prune older marks.
    assert second == {"evalsha": 1, "lindex": 4, "rpush": 3, "zadd": 1, "zremrangebyscore": 1}

    retried = await calls_during(raw_redis, store.write(round_))
    assert retried == {"evalsha": 1, "lindex": 3}

    await raw_redis.script_flush()  # as after a Redis restart
    third = await calls_during(raw_redis, store.write([BTC[6], BTC[7]]))
    assert third == {"evalsha": 1, "eval": 1, "lindex": 1, "rpush": 1, "ltrim": 1}
    assert await store.load("binance", "BTCUSDT", 10) == [
        BTC[1],
        BTC[2],
        BTC_PARTIAL[1],
        BTC[6],
        BTC[7],
    ]
    await store.close()


@pytest.mark.integration
async def test_password_in_url_works_and_never_shows(
    redis_server: Server, raw_redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await raw_redis.config_set("requirepass", "s3cret-pw")
    good = RedisBarStore.from_url(f"redis://:s3cret-pw@127.0.0.1:{redis_server.port}/0")
    assert await good.ping()
    await good.write(ETH)
    assert await good.load("binance", "ETHUSDT", 5) == ETH
    await good.close()

    wrong = RedisBarStore.from_url(f"redis://:wrong-pw@127.0.0.1:{redis_server.port}/0")
    with pytest.raises(StoreUnavailable) as refused:
        await wrong.write(BTC[0:1])
    assert "wrong-pw" not in str(refused.value)
    await wrong.close()

    caplog.set_level(logging.DEBUG, logger="streamer")
    nobody = RedisBarStore.from_url(f"redis://:s3cret-pw@127.0.0.1:{closed_port()}/0")
    writer = BufferedBarWriter(nobody, policy=RetryPolicy(0.01, 0.05))
    writer.connected = True  # as if it had been up: the outage gets logged
    writer.submit(BTC[0:1])
    assert await writer.flush(0.3) == 1
    assert writer.write_errors_total >= 1
    assert "redis://:***@127.0.0.1" in caplog.text
    assert "s3cret-pw" not in caplog.text
    await nobody.close()


@pytest.mark.integration
async def test_a_round_redis_refuses_is_rejected_dropped_and_later_rounds_still_land(
    redis_server: Server, raw_redis: aioredis.Redis
) -> None:
    """A key of the wrong type (written by something else) refuses every round that touches
    it; that is permanent, so the writer drops the round instead of retrying it forever."""
    await raw_redis.set("tickcast:bars:binance:ETHUSDT", b"not a list")
    store = RedisBarStore.from_url(redis_server.url, cap=CAP)
    with pytest.raises(StoreRejected, match="WRONGTYPE"):
        await store.write(ETH[0:1])
    with pytest.raises(StoreRejected, match="WRONGTYPE"):
        await store.load("binance", "ETHUSDT", 10)
    writer = BufferedBarWriter(store, policy=RetryPolicy(0.01, 0.05))
    writer.submit([ETH[0], BTC[0]])  # the script stops at ETH, before it gets to BTC
    assert await writer.flush(10.0) == 0
    writer.submit([BTC[1]])
    assert await writer.flush(10.0) == 0
    assert writer.dropped_by_reason == {"overflow": 0, "rejected": 2}
    assert writer.write_errors_total == 1
    assert await store.load("binance", "BTCUSDT", 10) == BTC[1:2]
    await store.close()


# --- BufferedBarWriter against a Redis that goes away ---


@pytest.mark.integration
async def test_writer_buffers_through_a_redis_outage_and_writes_everything_once(
    redis_server: Server, raw_redis: aioredis.Redis
) -> None:
    store = RedisBarStore.from_url(redis_server.url, socket_timeout=1.0)
    latencies: list[float] = []
    writer = BufferedBarWriter(
        store, policy=RetryPolicy(0.01, 0.1), on_write_latency=latencies.append
    )

    async def window(exchange: str, symbol: str) -> list[Bar]:
        return await store.load(exchange, symbol, 100)

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(writer.run(), name="bar-writer")
        writer.submit([BTC[0], KRAKEN[0]])

        async def first_round_written() -> bool:
            return await window("binance", "BTCUSDT") == BTC[0:1]

        await wait_until(first_round_written, 15, "the first round")
        assert writer.connected and latencies and writer.last_write_seconds == latencies[-1]
        await raw_redis.save()  # persisted, so the restarted server starts from here
        redis_server.stop()

        for minute in range(1, 12):  # eleven minutes closing while Redis is down
            writer.submit([BTC[minute]] + ([KRAKEN[minute]] if minute < len(KRAKEN) else []))

        async def outage_seen() -> bool:
            return writer.write_errors_total > 0 and not writer.connected

        await wait_until(outage_seen, 15, "the writer to notice the outage")
        assert writer.buffered == 14
        assert writer.dropped_total == 0

        redis_server.start()

        async def all_written() -> bool:
            return writer.buffered == 0 and writer.connected

        await wait_until(all_written, 15, "the backlog to drain")
        task.cancel()

    assert await window("binance", "BTCUSDT") == BTC
    assert await window("kraken", "BTC-USDT") == KRAKEN
    assert writer.dropped_total == 0
    await store.close()


@pytest.mark.integration
async def test_writer_overflow_drops_the_oldest_and_counts_them(
    redis_server: Server,
) -> None:
    store = RedisBarStore.from_url(redis_server.url, socket_timeout=1.0)
    writer = BufferedBarWriter(store, max_bars=5, policy=RetryPolicy(0.01, 0.05))
    redis_server.stop()
    writer.submit(BTC)
    assert (writer.buffered, writer.dropped_total) == (5, 7)
    assert await writer.flush(0.2) == 5
    redis_server.start()
    assert await writer.flush(10.0) == 0
    assert await store.load("binance", "BTCUSDT", 100) == BTC[7:12]
    assert writer.dropped_by_reason == {"overflow": 7, "rejected": 0}
    await store.close()


@pytest.mark.integration
async def test_flush_on_shutdown_writes_in_order_including_repairs(
    redis_server: Server,
) -> None:
    store = RedisBarStore.from_url(redis_server.url, cap=CAP)
    writer = BufferedBarWriter(store, max_round_bars=2)
    writer.submit([BTC[0], BTC_PARTIAL[0], ETH[0]])
    writer.submit([BTC[3], ETH[1]])  # minute 2 missing: the feed was down
    writer.submit_repair([BTC[1], BTC[2]])
    writer.submit([BTC[4], ETH[2]])
    assert await writer.flush(10.0) == 0
    assert await store.load("binance", "BTCUSDT", 10) == BTC[0:5]
    assert await store.load("binance", "ETHUSDT", 10) == ETH
    await store.close()


@pytest.mark.integration
async def test_an_entry_that_is_not_a_bar_never_blocks_a_round(
    redis_server: Server, raw_redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisBarStore.from_url(redis_server.url, cap=CAP)
    await store.write([BTC[0]])
    await raw_redis.rpush("tickcast:bars:binance:BTCUSDT", b"not a bar")
    await store.write([BTC[1], ETH[0]])  # the round still lands, for both symbols
    assert await store.load("binance", "ETHUSDT", 10) == ETH[0:1]
    with caplog.at_level(logging.WARNING, logger="streamer.io.store"):
        assert await store.load("binance", "BTCUSDT", 10) == BTC[0:2]
    assert "skipped 1 undecodable bars in tickcast:bars:binance:BTCUSDT" in caplog.text
    await store.repair([incomplete(BTC[2])])  # a repair drops the entry
    assert await raw_redis.lrange("tickcast:bars:binance:BTCUSDT", 0, -1) == [
        encode_bar(BTC[0]),
        encode_bar(BTC[1]),
        encode_bar(BTC[2]),
    ]
    await raw_redis.lpush("tickcast:bars:binance:BTCUSDT", b"{}")  # garbage first, then a mark
    await store.write([incomplete(BTC[3])])
    assert await store.load("binance", "BTCUSDT", 10) == [
        BTC[0],
        BTC[1],
        incomplete(BTC[2]),
        incomplete(BTC[3]),
    ]
    await store.close()
