"""MemoryBarStore properties, BufferedBarWriter against a store that fails on cue, URL redaction.

The store semantics shared with Redis (append, retry, cap, repair, incomplete flags) are tested
against both stores in tests/integration/test_store_redis.py; here the writer's buffering,
ordering and drop accounting are driven by a hand-written fake store, which is fine for a shell's
unit test: the thing under test is the writer.

Bars are real: Binance USD-M BTCUSDT 1-minute bars (OHLCV and trade counts) of 2020-02-22
00:00-00:11 UTC, aggregated from tardis.dev trades (tests/support/bars.py).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection
from support.bars import BTC

from streamer.core.retry import Permanent, RetryPolicy, Transient
from streamer.core.types import Bar
from streamer.io.store import (
    BufferedBarWriter,
    MemoryBarStore,
    RedisBarStore,
    StoreError,
    StoreRejected,
    StoreUnavailable,
    redact_url,
)
from streamer.io.store.packing import PackedConnection, PackedSSLConnection

FAST = RetryPolicy(initial_s=0.001, max_s=0.01)
PACKING = "streamer/io/store/packing.py"


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
            raise StoreRejected("redis://cache:6379: ResponseError: WRONGTYPE")
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
    writer = BufferedBarWriter(store, policy=FAST)
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
    writer = BufferedBarWriter(store, max_bars=4, policy=FAST)
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
    writer = BufferedBarWriter(store, max_bars=3, policy=FAST)
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
    writer = BufferedBarWriter(store, policy=FAST)
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
    writer = BufferedBarWriter(store, policy=FAST)
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


async def test_the_writer_waits_between_tries_as_its_policy_says() -> None:
    store = FakeStore()
    store.down = True
    writer = BufferedBarWriter(store, policy=RetryPolicy(initial_s=60.0, max_s=60.0))
    writer.submit(BTC[0:1])
    assert await writer.flush(0.2) == 1
    assert writer.write_errors_total == 1  # the next try is 30 to 60 s away


def test_writer_refuses_a_policy_that_would_give_up_on_bars() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        BufferedBarWriter(MemoryBarStore(), policy=RetryPolicy(max_attempts=3))


async def test_a_round_failing_with_an_unexpected_error_is_dropped_not_retried() -> None:
    """Only a ``Transient`` error keeps a round; a bug in a store must not block later bars."""

    class Broken(FakeStore):
        async def write(self, bars: Sequence[Bar]) -> None:
            self.rounds.append(("write", list(bars)))
            if len(self.rounds) == 1:
                raise ValueError("a bug in the store")
            await self.memory.write(bars)

    store = Broken()
    writer = BufferedBarWriter(store, policy=FAST)
    writer.submit(BTC[0:2])
    assert await writer.flush(5.0) == 0
    writer.submit(BTC[2:3])
    assert await writer.flush(5.0) == 0
    assert store.rounds == [("write", BTC[0:2]), ("write", BTC[2:3])]
    assert writer.dropped_by_reason == {"overflow": 0, "rejected": 2}
    assert await store.window() == BTC[2:3]


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
        ("SET", "k", 0.1),
    ],
)
def test_hiredis_packing_matches_redis_py(command: tuple[str | bytes | int | float, ...]) -> None:
    """The store's connections pack with hiredis; the bytes on the wire must not change."""
    ours = b"".join(PackedConnection().pack_command(*command))
    assert ours == b"".join(Connection().pack_command(*command)), (
        f"{PACKING} packs {command!r} unlike redis-py: fix or drop the override"
    )
    pipelined = [("LRANGE", "k", 0, -1), ("ZRANGE", "m", 0, -1), command]
    assert b"".join(PackedConnection().pack_commands(pipelined)) == b"".join(
        Connection().pack_commands(pipelined)
    ), f"{PACKING} packs a pipeline unlike redis-py: fix or drop the override"


def test_redis_py_still_packs_every_command_through_pack_command() -> None:
    """The override in streamer/io/store/packing.py assumes redis-py's asyncio connections pack
    each command with ``pack_command(*args)`` and send what it returns; a redis-py release that
    changes either fails here, by name, rather than slowly or subtly in production."""
    params = list(inspect.signature(Connection.pack_command).parameters.values())
    assert [(p.name, p.kind) for p in params] == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("args", inspect.Parameter.VAR_POSITIONAL),
    ], f"redis-py changed Connection.pack_command to {params}: update or drop {PACKING}"

    packed: list[tuple[object, ...]] = []
    sent: list[object] = []

    class Capturing(PackedConnection):
        def pack_command(self, *args: Any) -> list[bytes]:
            packed.append(args)
            return super().pack_command(*args)

        async def send_packed_command(self, command: object, check_health: bool = True) -> None:
            sent.append(command)

    command = ("EVALSHA", "0" * 40, 1, "tickcast:bars:binance:BTCUSDT", 1440, b"[1,2.5]")
    asyncio.run(Capturing().send_command(*command))
    assert packed == [command], (
        f"redis-py no longer packs a command with pack_command(*args): update or drop {PACKING}"
    )
    assert sent == [PackedConnection().pack_command(*command)], (
        f"redis-py no longer sends what pack_command returns: update or drop {PACKING}"
    )


def test_from_url_connects_with_the_hiredis_packing_connections() -> None:
    plain = RedisBarStore.from_url("redis://cache.invalid:6379/0")
    tls = RedisBarStore.from_url("rediss://cache.invalid:6380/0")
    assert plain._client.connection_pool.connection_class is PackedConnection
    assert tls._client.connection_pool.connection_class is PackedSSLConnection


# --- the errors the stores raise ---


def test_an_unavailable_store_is_transient_and_a_refusal_permanent() -> None:
    """The writer retries what is ``Transient`` and drops what is not; callers that catch
    ``StoreError`` see both."""
    unavailable = StoreUnavailable("redis://cache:6379: ConnectionError: refused")
    refused = StoreRejected("redis://cache:6379: ResponseError: WRONGTYPE")
    assert isinstance(unavailable, StoreError) and isinstance(unavailable, Transient)
    assert isinstance(refused, StoreError) and isinstance(refused, Permanent)
    assert not isinstance(refused, Transient) and not isinstance(unavailable, Permanent)
    assert RetryPolicy().decide(unavailable, RetryPolicy().backoff()).retry
    assert not RetryPolicy().decide(refused, RetryPolicy().backoff()).retry
