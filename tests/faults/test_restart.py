"""Fault: the daemon is stopped mid-minute (SIGTERM) or killed (SIGKILL), then restarted.

Run 1 is the real daemon, ``python -m streamer run`` in a subprocess configured only by
``TICKCAST_*`` variables, on the watermark clock (bars closed by trade times alone), against a
replay exchange served from this test process, real Redis and real Mosquitto; it gets a real
signal in the middle of a minute. Run 2, the restart, comes in two forms:

* a ``Streamer`` in this process on the replay clock. It uses exactly the restore code a
  wall-clock restart uses (``Streamer._restore``), with the replay clock as its wall clock (a
  process can only run on the wall clock, which is 2026 while the recorded data is 2023). After
  SIGTERM mid-minute and a restart: the partial bar stored at the stop is replaced by the
  exchange's bar, no minute is lost or stored twice, and the first forecast after the restart is
  the one at the next minute close, with no minute forecast twice across the two runs. After
  SIGKILL and a restart: the windows come back from Redis, the downtime is backfilled over REST,
  forecasts resume, and the status topic read ``offline`` (the last will) in between.
* a second process on the watermark clock, after a few minutes of downtime: the downtime and
  the interrupted minute must be repaired over REST.

Checked afterwards: every bar the exchange side sent is in Redis exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.faults import (
    missing_forecast_minutes,
    replay_stored,
    stored_exactly_once,
    wait_stored_exactly_once,
)
from support.mqtt import Subscriber, subscribed
from support.servers import ServerProcess
from support.streamer import (
    SYMBOLS,
    daemon,
    daemon_env,
    expected_bars,
    kline_sources,
    log_tail,
    model_file,
    read_bars,
    replay_streamer,
    running,
    seed_bars,
)
from support.waits import wait_until

from streamer.app import SHUTDOWN_TIMEOUT_S, Streamer
from streamer.core.contracts.mqtt import iso_seconds
from streamer.core.types import MINUTE_MS, floor_minute
from streamer.replay.data import Source
from streamer.replay.server import ReplayServer

pytestmark = pytest.mark.integration

SPEED = 40.0  # a data minute every 1.5 s: a restart fits inside the minute it stopped in
GRACE_MS = 10_000  # data time; at 40x it allows 250 ms of processing lag
STREAM_FROM = 20  # minutes 0-19 are in Redis before run 1 (as a previous run left them)


@dataclass
class Run1:
    """Run 1 in the middle of a minute, and what it runs against."""

    sources: list[Source]
    server: ReplayServer
    sub: Subscriber
    env: dict[str, str]  # the daemon's, for a second process
    model: Path
    log: Path
    proc: asyncio.subprocess.Process

    @property
    def start(self) -> int:
        return self.server.start_ms


@contextlib.asynccontextmanager
async def run_1(
    minutes: int, redis: ServerProcess, mosquitto: ServerProcess, tmp_path: Path
) -> AsyncIterator[Run1]:
    """``minutes`` of data after the ``STREAM_FROM`` minutes a previous run left in Redis (the
    exchange's bars), replayed with a subscriber listening to the daemon, entered once the
    daemon forecasts every symbol and the replay is in the middle of a minute: its first two
    trades (+0 s, +15 s) are in, two to come."""
    sources = kline_sources(STREAM_FROM + minutes)
    await seed_bars(redis.url, [b for s in sources for b in expected_bars(s)[:STREAM_FROM]])
    model, log = model_file(tmp_path), tmp_path / "run1.log"
    start = sources[0].first_open_ms + STREAM_FROM * MINUTE_MS
    async with (
        subscribed(mosquitto.port) as sub,
        ReplayServer(sources, speed=SPEED, start_ms=start) as server,
    ):
        env = daemon_env(
            server,
            SYMBOLS,
            grace_ms=str(GRACE_MS),
            redis_url=redis.url,
            mqtt_url=mosquitto.url,
            model_registry=str(model),
        )
        async with daemon(env, log) as proc:
            await wait_until(
                lambda: (
                    all(len(sub.forecasts(s)) >= 3 for s in SYMBOLS) or proc.returncode is not None
                ),
                30,
                "run 1 forecasting",
            )
            assert proc.returncode is None, log_tail(log)
            await wait_until(
                lambda: 20_000 <= server.clock_ms() % MINUTE_MS < 25_000, 5, "mid-minute"
            )
            yield Run1(sources, server, sub, env, model, log, proc)


def run_2(run: Run1, redis_url: str, mqtt_url: str) -> Streamer:
    """The restart in this process, on the replay clock."""
    return replay_streamer(
        run.server,
        grace_ms=GRACE_MS,
        redis_url=redis_url,
        mqtt_url=mqtt_url,
        model_registry=str(run.model),
    )


async def run_2_to_the_end(run: Run1, redis_url: str) -> tuple[int, int]:
    """Wait for every closed minute in Redis and every symbol's forecast of the last one; the
    replay's end and that last closed minute."""
    end = await replay_stored(run.server, redis_url, run.sources, grace_ms=GRACE_MS)
    last_closed = floor_minute(end - GRACE_MS) - MINUTE_MS
    await wait_until(
        lambda: all(max(run.sub.bar_times(s)) == last_closed for s in SYMBOLS),
        10,
        "the last minute's forecasts",
    )
    return end, last_closed


async def test_sigterm_mid_minute_then_restart_recovers_the_partial_bar(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    async with run_1(10, redis_server, mosquitto_server, tmp_path) as run:
        server, sub, proc = run.server, run.sub, run.proc
        stopped_in = floor_minute(server.clock_ms())
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(SHUTDOWN_TIMEOUT_S + 5):
            code = await proc.wait()
        assert code == 0, log_tail(run.log)
        bars, marks = await read_bars(redis_server.url, "binance", SYMBOLS[0])
        partial = {b.open_time_ms: b for b in bars}[stopped_in]
        assert stopped_in in marks and partial.trades == 2  # the partial bar, stored
        run1_last = {s: max(sub.bar_times(s)) for s in SYMBOLS}

        # run 2, at once
        async with running(run_2(run, redis_server.url, mosquitto_server.url)):
            restarted_at = server.clock_ms()
            end, last_closed = await run_2_to_the_end(run, redis_server.url)

    assert await stored_exactly_once(redis_server.url, run.sources, end, GRACE_MS) == []
    # the minute of the stop: recovered, no longer the partial bar
    bars, marks = await read_bars(redis_server.url, "binance", SYMBOLS[0])
    assert stopped_in not in marks and {b.open_time_ms: b for b in bars}[stopped_in].trades == 4
    assert sub.status() == [b"online", b"offline", b"online", b"offline"]
    for symbol in SYMBOLS:
        times = sub.bar_times(symbol)
        # run 1 (watermark clock: no start-up backfill) forecast every minute from its first
        # minute close to the stop; run 2 goes on at the next minute close (the stopped one,
        # or if the restart took longer, the last one closed by then): no minute twice
        assert run1_last[symbol] == stopped_in - MINUTE_MS
        run2 = times[times.index(run1_last[symbol]) + 1 :]
        assert run2[0] == max(stopped_in, floor_minute(restarted_at) - MINUTE_MS), symbol
        if floor_minute(restarted_at) == stopped_in:
            assert run2[0] == stopped_in  # the next minute close
        assert missing_forecast_minutes(times, run.start, run1_last[symbol]) == []
        assert missing_forecast_minutes(run2, run2[0], last_closed) == []
        assert len(times) == len(set(times))
        assert iso_seconds(run2[0]) == sub.forecasts(symbol)[len(times) - len(run2)]["bar_time"]


async def test_sigkill_then_restart_restores_the_windows_and_fills_the_gap(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    async with run_1(12, redis_server, mosquitto_server, tmp_path) as run:
        server, sub = run.server, run.sub
        killed_in = floor_minute(server.clock_ms())
        run.proc.send_signal(signal.SIGKILL)
        assert await run.proc.wait() == -signal.SIGKILL
        await wait_until(lambda: sub.status()[-1:] == [b"offline"], 5, "the last will")
        # down for three data minutes
        await wait_until(lambda: server.clock_ms() >= killed_in + 3 * MINUTE_MS, 10, "downtime")
        in_redis, _ = await read_bars(redis_server.url, "binance", SYMBOLS[0])
        # nothing of the killed minute was stored: no ordered stop
        assert in_redis[-1].open_time_ms < killed_in

        streamer = run_2(run, redis_server.url, mosquitto_server.url)
        async with running(streamer):
            restarted_at = server.clock_ms()
            window = streamer.windows.tail(("binance", SYMBOLS[0]), 10_000)
            backfilled = streamer.metrics.backfill_bars.labels("binance")._value.get()
            end, last_closed = await run_2_to_the_end(run, redis_server.url)

    # run 2's window: what Redis held, then the downtime from REST, every minute once
    restored = [b.open_time_ms for b in window]
    now_minute = floor_minute(restarted_at)
    assert restored == list(range(run.sources[0].first_open_ms, now_minute, MINUTE_MS))
    assert backfilled == len(SYMBOLS) * (now_minute - in_redis[-1].close_time_ms) // MINUTE_MS
    assert await stored_exactly_once(redis_server.url, run.sources, end, GRACE_MS) == []
    assert sub.status() == [b"online", b"offline", b"online", b"offline"]
    for symbol in SYMBOLS:
        times = sub.bar_times(symbol)
        assert len(times) == len(set(times))
        # forecasts resume with the last backfilled minute, then every minute close
        run2 = [t for t in times if t >= now_minute - MINUTE_MS]
        assert run2[0] == now_minute - MINUTE_MS
        assert missing_forecast_minutes(run2, run2[0], last_closed) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_a_second_process_on_the_watermark_clock_repairs_the_downtime(
    redis_server: ServerProcess,
    mosquitto_server: ServerProcess,
    tmp_path: Path,
    sig: signal.Signals,
) -> None:
    async with run_1(12, redis_server, mosquitto_server, tmp_path) as run:
        server = run.server
        stopped = floor_minute(server.clock_ms())
        run.proc.send_signal(sig)
        await run.proc.wait()
        await wait_until(lambda: server.clock_ms() >= stopped + 3 * MINUTE_MS, 10, "downtime")
        async with daemon(run.env, tmp_path / "run2.log"):
            await server.wait_finished()
            end = run.sources[0].klines[-1].open_time_ms + 45_000
            await wait_stored_exactly_once(
                redis_server.url,
                run.sources,
                end,
                GRACE_MS,
                15,
                "every bar the exchange sent stored exactly once",
            )
    # after the second run's ordered stop: nothing lost, nothing twice, nothing left incomplete
    assert await stored_exactly_once(redis_server.url, run.sources, end, GRACE_MS) == []
