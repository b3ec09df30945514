"""End to end ingestion per venue: replay server -> one loopback WebSocket -> streamer -> Redis.

For each venue (``--venue``, repeatable; default all six) the replay exchange runs in this
process with that venue's dialect and replays the real Binance BTCUSDT trades of the bundled
tardis.dev recording in a loop (shifted in time and ids each lap), under the venue's symbol and
in its wire format, as fast as the client reads; the streamer runs as its own process
(``python -m streamer run``, as deployed), so each side has a core. The sustained rate is the
streamer's ``tickcast_trades_total`` over a timed stretch after warm-up. Then the server closes
the connection cleanly (every frame written is delivered), the streamer stops in order (partial
bars stored) and the bars in Redis are summed: trade count and volume must equal what the server
sent. Target per venue: >= 50,000 trades/s (Binance: 80,000), nothing lost. At full speed a
venue whose server sends heartbeats (Coinbase: one a second per product, Kraken: one per quiet
second) sends one per second of data, so about one per trade of this recording as well.

Figures per venue: ``ingest_e2e.<venue>.trades_per_s`` and ``ingest_e2e.<venue>.trades_lost``;
what was sent, the volume's relative error and the minutes stored are notes (stderr).

    .venv/bin/python bench/bench_ingest_e2e.py [--seconds 10] [--venue okx ...]
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
from benchkit import figure, free_port, note
from prometheus_client.parser import text_string_to_metric_families

from streamer.core.contracts.redis_bars import bars_key, decode_bar
from streamer.replay.cli import WS_PATHS, venue_symbol
from streamer.replay.data import bundled_trade_paths, load_source
from streamer.replay.server import ReplayServer

VENUES = ("binance", "coinbase", "kraken", "okx", "bybit", "bitstamp")
TARGET_TRADES_PER_S = 50_000  # every venue
TARGETS = {"binance": 80_000}  # Binance keeps its earlier, higher target
WARMUP_S = 2.0


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


async def ingest(venue: str, seconds: float, redis_port: int) -> None:
    """One venue's run: its figures and notes."""
    symbol = venue_symbol(venue, "BTCUSDT")
    source = load_source(next(p for p in bundled_trade_paths() if "tardis" in p.name), symbol)
    metrics_port = free_port()
    async with ReplayServer([source], speed=0, loop=True, dialect=venue) as server:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "TICKCAST_SYMBOLS": f"{venue}:{symbol}",
            "TICKCAST_WS_URLS": json.dumps({venue: server.ws_url + WS_PATHS[venue]}),
            "TICKCAST_REST_URLS": json.dumps({venue: server.rest_url}),
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
            sent_trades = server.sent.trades[symbol]
            sent_volume = server.sent.volume(symbol)
            heartbeats = server.heartbeats_sent
            deadline = time.monotonic() + 30
            while await trades_total(session, metrics_port) < sent_trades:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
        streamer.send_signal(signal.SIGTERM)
        streamer.wait(timeout=30)
    client = aioredis.from_url(f"redis://127.0.0.1:{redis_port}/0")
    raw = await client.lrange(bars_key(venue, symbol), 0, -1)
    await client.aclose()
    bars = [decode_bar(venue, symbol, r) for r in raw]
    stored_trades = sum(b.trades for b in bars)
    stored_volume = math.fsum(b.volume for b in bars)
    rate = (n1 - n0) / (t1 - t0)
    target = TARGETS.get(venue, TARGET_TRADES_PER_S)
    figure(f"ingest_e2e.{venue}.trades_per_s", round(rate), "trades/s", target, "higher")
    figure(f"ingest_e2e.{venue}.trades_lost", sent_trades - stored_trades, "trades", 0, "lower")
    rel = abs(stored_volume - sent_volume) / sent_volume if sent_volume else 0.0
    note(
        f"{venue}: {sent_trades} trades and {heartbeats} heartbeats sent, volume relative error "
        f"{rel:.2g}, {len(bars)} minutes in Redis; {seconds:g} s timed after {WARMUP_S:g} s "
        f"warm-up; streamer exit code {streamer.returncode}"
    )


async def main(seconds: float, venues: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp())
    redis_proc, redis_port = start_redis(tmp)
    try:
        for venue in venues:
            await ingest(venue, seconds, redis_port)
    finally:
        redis_proc.terminate()
        redis_proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--venue", action="append", choices=VENUES, help="repeat; default all six")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.venue or list(VENUES)))
