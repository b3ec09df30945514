"""Latency of one Redis write round: 1,000 symbols' closed bars (one each) in one script call.

Starts its own redis-server on a free loopback port (no persistence), warms up until every list
is full, then times 500 rounds of ``RedisBarStore.write`` end to end (grouping, encoding, the
EVALSHA round trip and the script), so each timed round also trims every list. The lists are
capped at 60 bars rather than 1440 to keep the server small: the list operations work at the
ends and cost the same at either length. Prices are real Binance 1-minute bars of BTCUSDT,
ETHUSDT and SOLUSDT (2023-04-27..05-01, bundled in streamer/replay/data/), spread over 1,000
symbol names at different offsets; those files carry no trade counts, so ``trades`` is 0.
A third figure is the mean time Redis spent in the script (INFO commandstats), to tell server
from client time.

    .venv/bin/python bench/bench_redis_write.py [--rounds 500] [--symbols 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

import benchkit
import redis.asyncio as aioredis
from benchkit import free_port

from streamer.core.types import MINUTE_MS, Bar
from streamer.io.store import RedisBarStore
from streamer.replay.data import DATA_DIR, load_source

SERIES = [
    "BTCUSDT_1m_20230427_20230501",
    "ETHUSDT_1m_20230427_20230501",
    "SOLUSDT_1m_20230427_20230501",
]
CAP = 60
WARMUP_ROUNDS = CAP + 10
TARGET_P99_MS = 30.0

Ohlcv = tuple[float, float, float, float, float]


def load_series(name: str) -> list[Ohlcv]:
    return [
        (float(k.open), float(k.high), float(k.low), float(k.close), float(k.volume))
        for k in load_source(DATA_DIR / f"{name}.csv.gz").klines
    ]


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server") or "/usr/sbin/redis-server"
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*argv, "--dir", workdir], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.02)


def make_rounds(n_rounds: int, n_symbols: int) -> list[list[Bar]]:
    series = [load_series(name) for name in SERIES]
    base = 1682629200000  # 2023-04-27 21:00 UTC, the first minute of the bundled files
    rounds = []
    for r in range(n_rounds):
        bars = []
        for i in range(n_symbols):
            rows = series[i % len(series)]
            o, h, lo, c, v = rows[(r + 37 * i) % len(rows)]
            bars.append(Bar("binance", f"S{i:04d}USDT", base + r * MINUTE_MS, o, h, lo, c, v, 0))
        rounds.append(bars)
    return rounds


async def measure(port: int, rounds: list[list[Bar]]) -> tuple[list[float], float]:
    """Seconds of each timed round, and the mean server-side milliseconds of the script."""
    store = RedisBarStore.from_url(f"redis://127.0.0.1:{port}/0", cap=CAP)
    stats = aioredis.Redis(port=port)
    seconds = []
    try:
        for i, bars in enumerate(rounds):
            if i == WARMUP_ROUNDS:
                await stats.config_resetstat()
            started = time.perf_counter()
            await store.write(bars)
            if i >= WARMUP_ROUNDS:
                seconds.append(time.perf_counter() - started)
        assert len(await store.load("binance", "S0999USDT", 10_000)) == CAP
        commandstats = await stats.info("commandstats")
        script_ms = float(commandstats["cmdstat_evalsha"]["usec_per_call"]) / 1000
    finally:
        await store.close()
        await stats.aclose()
    return seconds, script_ms


def figure(name: str, value: float, target: float | None) -> None:
    benchkit.figure(name, round(value, 3), "ms", target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--symbols", type=int, default=1000)
    args = parser.parse_args()
    rounds = make_rounds(args.rounds + WARMUP_ROUNDS, args.symbols)
    with tempfile.TemporaryDirectory() as workdir:
        proc, port = start_redis(workdir)
        try:
            seconds, script_ms = asyncio.run(measure(port, rounds))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    prefix = f"redis_write_round_{args.symbols}_symbols"
    figure(f"{prefix}_p50", statistics.median(ms), None)
    figure(f"{prefix}_p99", p99, TARGET_P99_MS)
    figure(f"{prefix}_script_mean", script_ms, None)


if __name__ == "__main__":
    main()
