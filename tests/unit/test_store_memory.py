"""MemoryBarStore properties, BufferedBarWriter against a store that fails on cue, URL redaction.

The store semantics shared with Redis (append, retry, cap, repair, incomplete flags) are tested
against both stores in tests/integration/test_store_redis.py; here the writer's buffering,
ordering and drop accounting are driven by a hand-written fake store, which is fine for a shell's
unit test: the thing under test is the writer.

Bars are real: Binance USD-M BTCUSDT 1-minute bars (OHLCV and trade counts) aggregated from the
tardis.dev trades of 2020-02-22 00:00-00:11 UTC in ../shared/data/trades/binance_usdm_perp/ (see
its SOURCES.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from itertools import pairwise

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection

from streamer.core.backoff import Backoff
from streamer.core.types import Bar
from streamer.io.store import (
    BufferedBarWriter,
    MemoryBarStore,
    RedisBarStore,
    StoreError,
    StoreUnavailable,
    _PackedConnection,
    redact_url,
)

BTC = [
    Bar("binance", "BTCUSDT", *row)
    for row in [
        (1582329600000, 9682.0, 9684.69, 9681.28, 9682.31, 35.713, 90),
        (1582329660000, 9681.93, 9683.5, 9666.66, 9673.15, 70.843, 176),
        (1582329720000, 9673.86, 9678.6, 9666.84, 9668.74, 57.815, 172),
        (1582329780000, 9669.41, 9675.19, 9669.41, 9673.21, 41.962, 88),
        (1582329840000, 9674.46, 9674.46, 9670.28, 9671.21, 26.525, 68),
        (1582329900000, 9670.28, 9676.47, 9668.97, 9676.47, 38.021, 107),
        (1582329960000, 9676.46, 9679.09, 9675.7, 9675.8, 24.121, 70),
        (1582330020000, 9676.49, 9678.72, 9675.38, 9677.91, 16.946, 47),
        (1582330080000, 9677.21, 9681.2, 9676.14, 9681.1, 9.038, 50),
        (1582330140000, 9681.09, 9686.85, 9679.66, 9686.84, 36.641, 77),
        (1582330200000, 9686.84, 9686.85, 9686.84, 9686.85, 110.121, 81),
        (1582330260000, 9686.85, 9689.34, 9686.84, 9687.99, 45.963, 66),
    ]
]
FAST = Backoff(initial_s=0.001, max_s=0.01)


class FakeStore:
    """A MemoryBarStore that records each round and can be down, refuse, or stall on cue."""

    def __init__(self) -> None:
        self.memory = MemoryBarStore()
        self.down = False
        self.refuse = False
        self.gate: asyncio.Event | None = None
        self.rounds: list[tuple[str, list[Bar]]] = []

    async def _round(self, kind: str, bars: Sequence[Bar]) -> None:
        self.rounds.append((kind, list(bars)))
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise StoreUnavailable("redis://:***@cache:6379: ConnectionError: refused")
        if self.refuse:
            raise StoreError("redis://cache:6379: ResponseError: WRONGTYPE")
        await (self.memory.write(bars) if kind == "write" else self.memory.repair(bars))

    async def write(self, bars: Sequence[Bar]) -> None:
        await self._round("write", bars)

    async def repair(self, bars: Sequence[Bar]) -> None:
        await self._round("repair", bars)

    async def load(self, exchange: str, symbol: str, count: int) -> list[Bar]:
        return await self.memory.load(exchange, symbol, count)

    async def ping(self) -> bool:
        return not self.down

    async def close(self) -> None:
        return None

    async def window(self) -> list[Bar]:
        return await self.memory.load("binance", "BTCUSDT", 100)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Yield to the writer task until ``condition()`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


# --- MemoryBarStore ---


def test_memory_store_rejects_a_cap_below_one() -> None:
    with pytest.raises(ValueError, match="cap"):
        MemoryBarStore(cap=0)


@settings(max_examples=200, deadline=None)
@given(
    cap=st.integers(1, 8),
    cuts=st.lists(st.integers(0, len(BTC)), max_size=5),
    retried=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_memory_store_rounds_in_order_with_retries_equal_one_write(
    cap: int, cuts: list[int], retried: list[bool]
) -> None:
    """However a bar sequence is split into rounds, and whichever rounds are retried, the window
    is the newest ``cap`` bars, each once."""
    bounds = [0, *sorted(cuts), len(BTC)]
    rounds = [BTC[a:b] for a, b in pairwise(bounds)]

    async def scenario() -> list[Bar]:
        store = MemoryBarStore(cap=cap)
        for round_, retry in zip(rounds, retried, strict=False):
            await store.write(round_)
            if retry:
                await store.write(round_)
        return await store.load("binance", "BTCUSDT", 100)

    assert asyncio.run(scenario()) == BTC[-cap:]


@settings(max_examples=200, deadline=None)
@given(
    cap=st.integers(1, 15),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["write", "repair"]),
            st.lists(st.tuples(st.integers(0, len(BTC) - 1), st.booleans()), max_size=6),
        ),
        max_size=6,
    ),
)
def test_memory_store_window_stays_sorted_capped_and_backfill_restores_it(
    cap: int, ops: list[tuple[str, list[tuple[int, bool]]]]
) -> None:
    """Any mix of live writes (with gaps, incomplete bars, stale minutes) and repairs keeps the
    window strictly ordered and capped; a repair with every true bar then restores exactly the
    newest ``cap`` of them."""

    async def scenario() -> tuple[list[list[Bar]], list[Bar]]:
        store = MemoryBarStore(cap=cap)
        windows = []
        for kind, picks in ops:
            bars = [
                BTC[i] if complete else msgspec.structs.replace(BTC[i], complete=False)
                for i, complete in picks
            ]
            await (store.write(bars) if kind == "write" else store.repair(bars))
            windows.append(await store.load("binance", "BTCUSDT", 100))
        await store.repair(BTC)
        return windows, await store.load("binance", "BTCUSDT", 100)

    windows, repaired = asyncio.run(scenario())
    for window in windows:
        times = [bar.open_time_ms for bar in window]
        assert times == sorted(set(times))
        assert len(window) <= cap
    assert repaired == BTC[-cap:]
    assert all(bar.complete for bar in repaired)


# --- BufferedBarWriter ---


async def test_flush_writes_in_rounds_of_at_most_max_round_bars() -> None:
    store = FakeStore()
    latencies: list[float] = []
    writer = BufferedBarWriter(store, max_round_bars=5, on_write_latency=latencies.append)
    writer.submit(BTC)
    assert writer.buffered == 12
    assert await writer.flush(5.0) == 0
    assert store.rounds == [("write", BTC[0:5]), ("write", BTC[5:10]), ("write", BTC[10:12])]
    assert await store.window() == BTC
    assert len(latencies) == 3 and writer.last_write_seconds == latencies[-1]
    assert (writer.buffered, writer.dropped_total, writer.write_errors_total) == (0, 0, 0)
    assert writer.connected


async def test_repairs_queue_in_order_with_closed_bars() -> None:
    store = FakeStore()
    writer = BufferedBarWriter(store)
    partial = msgspec.structs.replace(BTC[1], volume=25.384, trades=56, complete=False)
    writer.submit([BTC[0], partial, BTC[3]])
    writer.submit_repair([BTC[1], BTC[2]])
    writer.submit([BTC[4]])
    assert await writer.flush(5.0) == 0
    assert store.rounds == [
        ("write", [BTC[0], partial, BTC[3]]),
        ("repair", [BTC[1], BTC[2]]),
        ("write", [BTC[4]]),
    ]
    assert await store.window() == BTC[0:5]


async def test_run_keeps_bars_through_an_outage_and_writes_them_in_order() -> None:
    store = FakeStore()
    store.down = True
    writer = BufferedBarWriter(store, backoff=FAST)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(writer.run(), name="bar-writer")
        for minute in range(8):
            writer.submit(BTC[minute : minute + 1])
        await wait_for(lambda: writer.write_errors_total >= 3)
        assert not writer.connected
        assert writer.buffered == 8
        store.down = False
        await wait_for(lambda: writer.buffered == 0)
        writer.submit(BTC[8:12])
        await wait_for(lambda: writer.buffered == 0)
        task.cancel()
    assert await store.window() == BTC
    assert writer.connected
    assert writer.dropped_total == 0
    written = [bars for kind, bars in store.rounds if kind == "write"]
    assert written[-2:] == [BTC[0:8], BTC[8:12]]  # the backlog went in one round, in order


async def test_overflow_drops_the_oldest_and_counts_them() -> None:
    store = FakeStore()
    store.down = True
    writer = BufferedBarWriter(store, max_bars=4, backoff=FAST)
    writer.submit(BTC[0:6])
    assert (writer.buffered, writer.dropped_total) == (4, 2)
    assert await writer.flush(0.05) == 4
    store.down = False
    assert await writer.flush(5.0) == 0
    assert await store.window() == BTC[2:6]
    assert writer.dropped_by_reason == {"overflow": 2, "rejected": 0}


async def test_bars_evicted_from_a_round_in_flight_count_only_if_the_round_fails() -> None:
    store = FakeStore()
    store.gate = asyncio.Event()
    writer = BufferedBarWriter(store, max_bars=3, backoff=FAST)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(writer.run(), name="bar-writer")
        writer.submit(BTC[0:3])
        await wait_for(lambda: len(store.rounds) == 1)
        writer.submit(BTC[3:5])  # evicts BTC[0] and BTC[1], which are being written
        store.gate.set()
        await wait_for(lambda: writer.buffered == 0)
        assert await store.window() == BTC[0:5]
        assert writer.dropped_total == 0

        store.gate.clear()
        writer.submit(BTC[5:8])
        await wait_for(lambda: len(store.rounds) == 3)
        writer.submit(BTC[8:10])  # evicts BTC[5] and BTC[6] from the round in flight
        store.down = True
        store.gate.set()
        await wait_for(lambda: writer.write_errors_total >= 1)
        assert writer.dropped_by_reason == {"overflow": 2, "rejected": 0}
        store.down = False
        await wait_for(lambda: writer.buffered == 0)
        task.cancel()
    assert await store.window() == BTC[0:5] + BTC[7:10]


async def test_a_refused_round_is_dropped_and_counted_and_later_bars_still_flow() -> None:
    store = FakeStore()
    store.refuse = True
    writer = BufferedBarWriter(store, backoff=FAST)
    writer.submit(BTC[0:2])
    assert await writer.flush(5.0) == 0
    assert writer.dropped_by_reason == {"overflow": 0, "rejected": 2}
    assert writer.write_errors_total == 1
    store.refuse = False
    writer.submit(BTC[2:4])
    assert await writer.flush(5.0) == 0
    assert await store.window() == BTC[2:4]


async def test_flush_gives_up_at_its_timeout_and_keeps_what_it_could_not_write() -> None:
    store = FakeStore()
    store.gate = asyncio.Event()  # a store that stalls, e.g. a half-open TCP connection
    writer = BufferedBarWriter(store, backoff=FAST)
    writer.submit(BTC[0:3])
    started = time.monotonic()
    assert await writer.flush(0.1) == 3
    assert time.monotonic() - started < 1.0
    store.gate.set()
    assert await writer.flush(5.0) == 0
    assert await store.window() == BTC[0:3]
    assert writer.dropped_total == 0


async def test_run_reports_connected_from_its_first_ping() -> None:
    store = FakeStore()
    writer = BufferedBarWriter(store)
    assert not writer.connected
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(writer.run(), name="bar-writer")
        await wait_for(lambda: writer.connected)
        task.cancel()


def test_writer_rejects_a_zero_sized_buffer() -> None:
    with pytest.raises(ValueError, match="max_bars"):
        BufferedBarWriter(MemoryBarStore(), max_bars=0)


# --- URLs and credentials ---


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://tick:p%40ss@cache:6380/1", "rediss://tick:***@cache:6380/1"),
        (
            "rediss://cache:6380?ssl_ca_certs=/etc/ca.pem&password=s3cret",
            "rediss://cache:6380?ssl_ca_certs=/etc/ca.pem&password=***",
        ),
        ("redis://tick@cache", "redis://tick@cache"),
    ],
)
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_from_url_refuses_a_bad_url_without_echoing_its_password() -> None:
    with pytest.raises(ValueError, match=r"http://:\*\*\*@cache") as refused:
        RedisBarStore.from_url("http://:s3cret@cache:6379")
    assert "s3cret" not in str(refused.value)


def test_from_url_takes_tls_and_credentials_from_the_url_without_connecting() -> None:
    store = RedisBarStore.from_url("rediss://tick:s3cret@cache.invalid:6380/2", cap=60)
    assert store.cap == 60
    assert store.name == "rediss://tick:***@cache.invalid:6380/2"
    pool = store._client.connection_pool
    assert issubclass(pool.connection_class, SSLConnection)
    assert pool.connection_kwargs["password"] == "s3cret"
    assert pool.connection_kwargs["db"] == 2


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "0" * 40, 2, "tickcast:bars:binance:BTCUSDT", "k2", 1440, b"[1,2.5]\n![3]"),
        ("CONFIG GET", "maxmemory"),
        ("LRANGE", "tickcast:bars:kraken:BTC-USD", -1440, -1),
        ("AUTH", "user", "pässword"),
    ],
)
def test_hiredis_packing_matches_redis_py(command: tuple[str | bytes | int, ...]) -> None:
    """The store's connections pack with hiredis; the bytes on the wire must not change."""
    ours = b"".join(_PackedConnection().pack_command(*command))
    assert ours == b"".join(Connection().pack_command(*command))
