"""End to end ingestion: replay server -> one loopback WebSocket -> streamer -> Redis.

The replay exchange runs in this process and replays the real Binance BTCUSDT trades of the
bundled tardis.dev recording in a loop (shifted in time and ids each lap) as fast as the client
reads; the streamer runs as its own process (``python -m streamer run``, as deployed), so each
side has a core. The sustained rate is the streamer's ``tickcast_trades_total`` over a timed
stretch after warm-up. Then the server closes the connection cleanly (every frame written is
delivered), the streamer stops in order (partial bars stored) and the bars in Redis are summed:
trade count and volume must equal what the server sent. Target: >= 80,000 trades/s, nothing lost.

    .venv/bin/python bench/bench_ingest_e2e.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from streamer.core.codec import bars_key, decode_bar
from streamer.replay.data import bundled_trade_paths, load_source
from streamer.replay.server import ReplayServer

TARGET_TRADES_PER_S = 80_000
WARMUP_S = 2.0


def figure(name: str, value: float, unit: str, target: float | None, better: str) -> None:
    line = {"bench": name, "value": value, "unit": unit, "target": target, "better": better}
    print(json.dumps(line), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(tmp)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


async def trades_total(session: aiohttp.ClientSession, port: int) -> float:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        if family.name == "tickcast_trades":
            return sum(s.value for s in family.samples if s.name == "tickcast_trades_total")
    return 0.0


async def main(seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp())
    redis_proc, redis_port = start_redis(tmp)
    source = load_source(next(p for p in bundled_trade_paths() if "tardis" in p.name), "BTCUSDT")
    metrics_port = free_port()
    try:
        async with ReplayServer([source], speed=0, loop=True) as server:
            env = {
                "PATH": os.environ.get("PATH", ""),
                "TICKCAST_SYMBOLS": "binance:BTCUSDT",
                "TICKCAST_WS_URLS": json.dumps({"binance": server.ws_url}),
                "TICKCAST_REST_URLS": json.dumps({"binance": server.rest_url}),
                "TICKCAST_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "TICKCAST_CLOCK": "watermark",  # replay time, not wall time, closes the bars
                "TICKCAST_WINDOW_CAP": "1000000",  # keep every minute, to count them all
                "TICKCAST_METRICS_PORT": str(metrics_port),
                "TICKCAST_LOG_LEVEL": "WARNING",
            }
            argv = [sys.executable, "-m", "streamer", "run"]
            streamer = subprocess.Popen(argv, env=env)  # noqa: ASYNC220 (started once)
            async with aiohttp.ClientSession() as session:
                while True:  # wait for the first trades
                    try:
                        if await trades_total(session, metrics_port) > 0:
                            break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
                await asyncio.sleep(WARMUP_S)
                t0, n0 = time.monotonic(), await trades_total(session, metrics_port)
                await asyncio.sleep(seconds)
                t1, n1 = time.monotonic(), await trades_total(session, metrics_port)
                # stop sending: a clean close delivers every frame written; no reconnects
                await server.drop_connections(close_frame=True, refuse_s=3600)
                sent_trades = server.sent.trades["BTCUSDT"]
                sent_volume = server.sent.volume("BTCUSDT")
                deadline = time.monotonic() + 30
                while await trades_total(session, metrics_port) < sent_trades:
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)
            streamer.send_signal(signal.SIGTERM)
            streamer.wait(timeout=30)
        client = aioredis.from_url(f"redis://127.0.0.1:{redis_port}/0")
        raw = await client.lrange(bars_key("binance", "BTCUSDT"), 0, -1)
        await client.aclose()
    finally:
        redis_proc.terminate()
        redis_proc.wait()
    bars = [decode_bar("binance", "BTCUSDT", r) for r in raw]
    stored_trades = sum(b.trades for b in bars)
    stored_volume = math.fsum(b.volume for b in bars)
    rate = (n1 - n0) / (t1 - t0)
    figure("ingest_e2e.trades_per_s", round(rate), "trades/s", TARGET_TRADES_PER_S, "higher")
    figure("ingest_e2e.trades_sent", sent_trades, "trades", None, "higher")
    figure("ingest_e2e.trades_lost", sent_trades - stored_trades, "trades", 0, "lower")
    rel = abs(stored_volume - sent_volume) / sent_volume if sent_volume else 0.0
    figure("ingest_e2e.volume_relative_error", rel, "ratio", 1e-9, "lower")
    figure("ingest_e2e.minutes_stored", len(bars), "bars", None, "higher")
    print(
        f"# {seconds:g} s timed after {WARMUP_S:g} s warm-up; streamer exit code "
        f"{streamer.returncode}; {len(bars)} minutes in Redis",
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(main(parser.parse_args().seconds))
