"""Soak: a week of real 1-minute data over three venues, replayed fast, with periodic faults.

The daemon is the real process, ``python -m streamer run``, configured by ``TICKCAST_*``
variables, with real Redis (append-only file, fsync every second) and real Mosquitto started
here, and one replay exchange per venue (``--venues``, default ``binance,coinbase,kraken``)
served from this process, each in its venue's dialect. It runs on the watermark clock (bars
close by trade time alone): data from 2016-2025 replayed at hundreds of times real speed has no
relation to the wall clock, and the watermark needs none. Faults, by each venue's simulated
time unless said otherwise:

* Binance rotates: its replay cuts connections 30 s (real) after they open, and the streamer is
  told to rotate 10 s before that cut (``TICKCAST_ROTATE_MARGIN_S``), make-before-break;
* every 12 h  Binance sends ``serverShutdown`` on every connection and closes them 3 s later;
* every 12 h  (Binance) and 6 h (Coinbase, Kraken) the venue drops every connection and
  refuses new ones for 0.3 s; halfway through the week one Binance drop's gap repair is answered
  418 (an IP ban) with ``Retry-After: 5`` (real seconds: a ban is wall-clock);
* Coinbase quiet stretches: half its products replay real low-activity segments (minutes
  without trades), and every product goes without a trade for 7 h once (a halt: longer than the
  streamer's 30 s stale-feed watchdog in real time, so only the heartbeat channel keeps the
  connection for live);
* every 24 h  Redis is restarted (SIGTERM, down 2 s of real time);
* every 12 h  the trainer promotes another model (the bundled LSTM and the torch-free fixture
  model alternate, both contract-conforming, window 60).

Binance faults wait until 8 s (real) have passed since its last connection and REST request,
so every REST request can be told apart: it follows a drop, or a rotation or ``serverShutdown``
(which must cause none: a rotation that left a minute incomplete would show as a REST repair).

Sampled all along: the daemon's resident memory (VmRSS of its process) against simulated time.
After warm-up (the first 36 simulated hours: the online evaluation keeps a 24 h window) the
slope is fitted by least squares. At the end every closed minute of every symbol is compared
with the exchange's bar in Redis (the Redis cap is raised to hold the whole week), and every
minute close is checked for a forecast on MQTT.

Data: ``../shared/data/klines_1m/``. Busy symbols: windows of contiguous days with no missing
and no zero-volume minute from the Binance spot, USD-M perpetual and Binance.US segments of
2021-2025, each shifted to one common start time (prices and volumes verbatim; only the
timestamps move, so that all series run side by side), named ``S00USDT`` (Binance),
``K00-USD`` (Kraken) and ``C00-USD`` (Coinbase). Coinbase's quiet products (``C05-USD``...)
come from the real low-activity segments (Kraken XBT/USDC 2023-Q1, where a minute without
trades has no row, and Binance.US BTC/USDC 2023-03, where it has volume 0). Coinbase products
are replayed as trades with gap-free ids (a product's ids count up by one across its quiet
minutes, as Coinbase's do: an id jump would mean missed matches), the same four synthesised
trades a minute as the kline replay makes, with quantities written as the exact decimals of
their binary values so that a REST candle's exact decimal volume sum is the bar's volume.
When the shared directory is missing, the bundled 4 days of BTCUSDT, ETHUSDT and SOLUSDT are
looped under every name. Not part of ``make test``; ``make soak`` runs it.

    .venv/bin/python bench/soak.py [--venues binance,coinbase,kraken] [--days 7] [--symbols 50]
                                   [--speed 700] [--max-minutes 18]

``--symbols`` is the total: with several venues Coinbase and Kraken get a fifth each, Binance
the rest. Prints one JSON line per figure: {"bench", "value", "unit", "target", "better"}.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import csv
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import aiomqtt
import benchkit
import redis.asyncio as aioredis
from benchkit import free_port, note, wait_port

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fixtures.models import build_model  # noqa: E402  (tests/fixtures: torch-free ONNX builder)

from streamer.core.bars import BarAggregator  # noqa: E402
from streamer.core.contracts.redis_bars import bars_key, decode_bar, incomplete_key  # noqa: E402
from streamer.core.exchanges.binance import BINANCE  # noqa: E402
from streamer.core.types import MINUTE_MS, Bar, Side, Trade  # noqa: E402
from streamer.replay.cli import WS_PATHS  # noqa: E402
from streamer.replay.data import (  # noqa: E402
    KLINE_HEADER,
    TRADE_HEADER,
    Kline,
    Source,
    bundled_kline_paths,
    load_source,
    synthesize_trades,
)
from streamer.replay.server import ReplayServer  # noqa: E402

SHARED_KLINES = REPO.parent / "shared" / "data" / "klines_1m"
# real low-activity segments: a minute without trades is missing (Kraken) or has volume 0
QUIET_FILES = ("kraken/XBTUSDC/*_1m_*.csv.gz", "binance_us/BTCUSDC/*_1m_*.csv.gz")
DEFAULT_MODEL = REPO / "models" / "default" / "model.onnx"
VENUES = ("binance", "coinbase", "kraken")
HOUR_MS = 60 * MINUTE_MS
WARMUP_H = 36.0
REDIS_EVERY_H, SWAP_EVERY_H = 24.0, 12.0
DROP_EVERY_H = {"binance": 12.0, "coinbase": 6.0, "kraken": 6.0}
DROP_FIRST_H = {"binance": 12.0, "coinbase": 2.0, "kraken": 4.0}
SHUTDOWN_EVERY_H, SHUTDOWN_FIRST_H, SHUTDOWN_CLOSE_S = 12.0, 6.0, 3.0
CUT_AFTER_S = 30.0  # the Binance replay's connection age limit (real seconds)
ROTATE_AFTER_S = 20.0  # the streamer rotates this long after opening: before the cut
BAN_S = 5  # Retry-After of the 418 (real seconds)
HALT_H = 7.0  # Coinbase: every product without trades for this long, once
QUIET_GAP_S = 8.0  # a Binance fault waits this long after its last connection and REST request
ATTRIBUTE_S = 10.0  # a connection this soon after a drop or notice is its reconnect
STALE_FEED_S = 30.0  # the streamer's default stale-feed watchdog
GRACE_MS = 60_000
NAME = "soak"


def figure(name: str, value: float, unit: str, target: float | None, better: str) -> None:
    benchkit.figure(f"{NAME}.{name}", value, unit, target, better)


# ---- data ---------------------------------------------------------------------------------

Row = list[str]
Window = list[Row | None]  # one entry per minute from the window's start; None: no trades


def _rows(path: Path) -> list[Row]:
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return list(reader)


def _traded(row: Row | None) -> bool:
    return row is not None and float(row[5]) > 0


def busy_windows(minutes: int, count: int) -> list[Window]:
    """Up to ``count`` runs of ``minutes`` contiguous, traded minutes from the shared Binance
    data, taken round-robin over the files so that the symbols and years mix."""
    files = sorted(SHARED_KLINES.glob("binance_*/*/*_1m_*.csv.gz"))
    runs_per_file: list[list[Window]] = []
    for path in files:
        rows = _rows(path)
        runs: list[Window] = []
        begin = 0
        for i in range(1, len(rows) + 1):
            broken = i == len(rows) or (
                int(rows[i][0]) != int(rows[i - 1][0]) + MINUTE_MS or float(rows[i][5]) <= 0
            )
            if broken:
                run: Window = list(rows[begin:i])
                runs += [run[j : j + minutes] for j in range(0, len(run) - minutes + 1, minutes)]
                begin = i + 1 if i < len(rows) and float(rows[i][5]) <= 0 else i
        if runs:
            runs_per_file.append(runs)
    return _round_robin(runs_per_file, count)


def quiet_windows(minutes: int, count: int) -> list[Window]:
    """Up to ``count`` runs of ``minutes`` minutes from the real low-activity segments, each
    beginning and ending with a traded minute, quiet minutes as None."""
    runs_per_file: list[list[Window]] = []
    for pattern in QUIET_FILES:
        for path in sorted(SHARED_KLINES.glob(pattern)):
            rows = _rows(path)
            first, last = int(rows[0][0]), int(rows[-1][0])
            grid: Window = [None] * ((last - first) // MINUTE_MS + 1)
            for row in rows:
                if float(row[5]) > 0:
                    grid[(int(row[0]) - first) // MINUTE_MS] = row
            runs: list[Window] = []
            at = 0
            while at + minutes <= len(grid):
                run = grid[at : at + minutes]
                if _traded(run[0]) and _traded(run[-1]):
                    runs.append(run)
                    at += minutes
                else:
                    at += 1
            if runs:
                runs_per_file.append(runs)
    return _round_robin(runs_per_file, count)


def _round_robin(runs_per_file: list[list[Window]], count: int) -> list[Window]:
    out: list[Window] = []
    while len(out) < count and any(runs_per_file):
        for runs in runs_per_file:
            if runs and len(out) < count:
                out.append(runs.pop(0))
    return out


def kline_source(window: Window, symbol: str, start: int, tmp: Path) -> Source:
    """The window as a 1m-kline source, shifted to ``start``."""
    path = tmp / f"{symbol}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(KLINE_HEADER)
        for i, row in enumerate(window):
            assert row is not None, "a kline source is replayed from busy windows only"
            w.writerow([start + i * MINUTE_MS, *row[1:6]])
    return load_source(path, symbol)


def exact_decimal(qty: str) -> str:
    """The exact decimal of a float quantity: a venue summing these decimals exactly (Coinbase's
    candles) gets the float sum, and the float nearest each is the quantity itself."""
    return format(Decimal(float(qty)), "f")


def trade_source(
    window: Window, symbol: str, start: int, tmp: Path, halt: tuple[int, int], first_id: int
) -> Source:
    """The window as a trade source, shifted to ``start``: each traded minute's four
    synthesised trades (``streamer.replay.data.synthesize_trades``), none in ``halt``, with
    trade ids that count up by one across the quiet minutes."""
    path = tmp / f"{symbol}.trades.csv"
    trade_id = first_id
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TRADE_HEADER)
        for i, row in enumerate(window):
            when = start + i * MINUTE_MS
            if not _traded(row) or halt[0] <= when < halt[1]:
                continue
            assert row is not None
            kline = Kline(when, *row[1:6], 0, "0", "0", "0", -1, -1)  # type: ignore[arg-type]
            for t in synthesize_trades(kline):
                side = "sell" if t.buyer_is_maker else "buy"
                maker = "true" if t.buyer_is_maker else "false"
                w.writerow([trade_id, t.ts_ms, t.price, exact_decimal(t.qty), maker, side])
                trade_id += 1
    return load_source(path, symbol)


@dataclass
class Venue:
    """One venue of the soak: its sources, its replay exchange, and what happened to it."""

    name: str
    sources: list[Source]
    loop: bool
    server: ReplayServer | None = None
    halt: tuple[int, int] | None = None  # data times with no trade at all (Coinbase)
    next_drop_h: float = 0.0
    drops: list[float] = field(default_factory=list)  # time.monotonic() of each drop
    # data times: before the drop, after the reconnect (their minutes may miss a forecast)
    outages: list[tuple[int, int]] = field(default_factory=list)
    replayed_ms: int = 0

    @property
    def replay(self) -> ReplayServer:
        assert self.server is not None
        return self.server

    def sim_h(self, first: int) -> float:
        return (self.replay.clock_ms() - first) / HOUR_MS


def symbol_counts(venues: list[str], total: int) -> dict[str, int]:
    """With several venues, Coinbase and Kraken get a fifth of the symbols each, Binance the
    rest; without Binance they share them."""
    if len(venues) == 1:
        return {venues[0]: total}
    if "binance" not in venues:
        share = total // len(venues)
        return {v: share + (i < total % len(venues)) for i, v in enumerate(venues)}
    counts = {v: max(total // 5, 2) for v in venues if v != "binance"}
    counts["binance"] = total - sum(counts.values())
    return {v: counts[v] for v in venues}


def halt_range(days: float, start: int) -> tuple[int, int]:
    """The Coinbase halt: 7 h from simulated hour 30 (a short run: from its middle)."""
    at_h = 30.0 if days * 24 >= 30.0 + HALT_H + 6 else days * 12
    begin = start + int(at_h * HOUR_MS)
    return begin, begin + int(HALT_H * HOUR_MS)


def prepare(names: list[str], days: float, total: int, tmp: Path) -> tuple[list[Venue], str]:
    counts = symbol_counts(names, total)
    prefix = {"binance": "S", "coinbase": "C", "kraken": "K"}
    quote = {"binance": "USDT", "coinbase": "-USD", "kraken": "-USD"}
    n_quiet = counts.get("coinbase", 0) // 2
    n_busy = sum(counts.values()) - n_quiet
    minutes = int(days * 1440) + 2
    start = 1_700_000_040_000 - 1_700_000_040_000 % MINUTE_MS  # one common start
    busy: list[Window] = []
    quiet: list[Window] = []
    loop = not SHARED_KLINES.is_dir()
    if not loop:
        busy = busy_windows(minutes, n_busy)
        quiet = quiet_windows(minutes, n_quiet)
        loop = len(busy) < n_busy or len(quiet) < n_quiet
    if loop:  # the bundled 4 days, looped under every name
        bundled = [_rows(p) for p in bundled_kline_paths()]
        start = int(bundled[0][0][0])
        busy = [list(bundled[i % len(bundled)]) for i in range(n_busy + n_quiet)]
        quiet, n_quiet = [], 0
        what = "bundled 4 days x 3 symbols, looped under every name"
    else:
        what = (
            f"{n_busy} busy and {n_quiet} low-activity real {days:g}-day windows "
            f"from {SHARED_KLINES}"
        )
    halt = halt_range(days, start)
    venues: list[Venue] = []
    for name in names:
        sources = []
        for i in range(counts[name]):
            symbol = f"{prefix[name]}{i:02d}{quote[name]}"
            if name == "coinbase":
                window = quiet.pop(0) if i >= counts[name] - n_quiet else busy.pop(0)
                sources.append(trade_source(window, symbol, start, tmp, halt, 1_000_000 * (i + 1)))
            else:
                sources.append(kline_source(busy.pop(0), symbol, start, tmp))
        venues.append(Venue(name, sources, loop, halt=halt if name == "coinbase" else None))
    return venues, what


def expected(source: Source, exchange: str, laps: int = 1, span_ms: int = 0) -> dict[int, Bar]:
    """The exchange's bars: the pure aggregator over the trades the replay serves (with
    ``laps`` of a looped replay, each shifted by the span: same values, later times)."""
    agg = BarAggregator(exchange, grace_ms=0)
    out: dict[int, Bar] = {}
    for _, trades in source.minutes():
        for t in trades:
            side: Side = "sell" if t.buyer_is_maker else "buy"
            trade = Trade(exchange, source.symbol, t.trade_id, t.ts_ms, float(t.price),
                          float(t.qty), side)  # fmt: skip
            for bar in agg.add(trade):
                out[bar.open_time_ms] = bar
    if laps > 1:
        first_lap = list(out.values())
        for lap in range(1, laps):
            for bar in first_lap:
                when = bar.open_time_ms + lap * span_ms
                out[when] = Bar(exchange, bar.symbol, when, bar.open, bar.high, bar.low,
                                bar.close, bar.volume, bar.trades)  # fmt: skip
    return out


# ---- servers ------------------------------------------------------------------------------


class Proc:
    def __init__(self, argv: list[str], port: int) -> None:
        self.argv, self.port = argv, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


def redis_server(tmp: Path) -> Proc:
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(tmp)]  # fmt: skip
    return Proc(argv, port)


def mosquitto(tmp: Path) -> Proc:
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 1000000\nset_tcp_nodelay true\n"
    )
    return Proc([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)], port)


def publish_model(root: Path, version: str, data: bytes) -> None:
    """The trainer's directory registry layout, written atomically."""
    vdir = root / "versions" / version
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "model.onnx").write_bytes(data)
    manifest = {"version": version, "sha256": hashlib.sha256(data).hexdigest(),
                "created_at": datetime.now(UTC).isoformat()}  # fmt: skip
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    tmp = root / ".current.tmp"
    tmp.write_text(json.dumps({"version": version}))
    os.replace(tmp, root / "current")


def comparable(bar: Bar) -> tuple[float | int, ...]:
    return (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else float("nan")


async def wait_reconnected(server: ReplayServer) -> None:
    while server.connection_count == 0 and not server.finished:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


Sample = tuple[str, dict[str, str], float]


async def scrape(session: aiohttp.ClientSession, port: int) -> list[Sample]:
    """The daemon's metrics: (name, labels, value) per exposition line."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    out: list[Sample] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = {}
        for part in rest.rstrip("}").split('",'):
            key, sep, val = part.partition('="')
            if sep:
                labels[key] = val.rstrip('"')
        out.append((name, labels, float(value)))
    return out


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(
        v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())
    )


def attribute_rest(server: ReplayServer, t0: float, drops: list[float],
                   notices: list[float]) -> dict[str, int]:  # fmt: skip
    """Each REST request of ``server``, by what opened the connection before it: the
    start-up, a drop's reconnect, a shutdown notice's successor, or a rotation (any other)."""
    kinds: list[str] = []
    for at in server.connection_attempts:
        if at < t0 + ATTRIBUTE_S:
            kinds.append("startup")
        elif any(d <= at <= d + ATTRIBUTE_S for d in drops):
            kinds.append("drop")
        elif any(n <= at <= n + ATTRIBUTE_S for n in notices):
            kinds.append("server_shutdown")
        else:
            kinds.append("rotate")
    counts: dict[str, int] = defaultdict(int)
    for kind in kinds:
        counts[f"connections_{kind}"] += 1
    for entry in server.rest_log:
        i = bisect.bisect_right(server.connection_attempts, entry.arrived) - 1
        counts[f"rest_after_{kinds[i] if i >= 0 else 'startup'}"] += 1
    return counts


# ---- the run ------------------------------------------------------------------------------


@dataclass
class Tally:
    checked: int = 0
    lost: int = 0
    different: int = 0
    incomplete: int = 0
    from_rest: int = 0  # Coinbase bars with trades=0 (REST candles have no count)
    from_rest_outside: int = 0  # ... of them outside every outage: a repair nothing explains
    quiet: int = 0  # checked minutes without trades
    due: int = 0
    missing: int = 0
    missing_outside: int = 0


async def soak(args: argparse.Namespace) -> None:
    names = [v.strip() for v in args.venues.split(",") if v.strip()]
    unknown = [v for v in names if v not in VENUES]
    if unknown or not names or len(set(names)) != len(names):
        raise SystemExit(f"--venues: a comma-separated subset of {', '.join(VENUES)}")
    tmp = Path(tempfile.mkdtemp(prefix="tickcast-soak-"))
    t_load = time.monotonic()
    venues, what = prepare(names, args.days, args.symbols, tmp)
    note(f"data: {what}; loaded in {time.monotonic() - t_load:.0f} s")
    note("symbols: " + ", ".join(f"{v.name} {len(v.sources)}" for v in venues))
    by_name = {v.name: v for v in venues}
    binance, coinbase = by_name.get("binance"), by_name.get("coinbase")
    if coinbase is not None and coinbase.halt is not None:
        halt_real_s = (coinbase.halt[1] - coinbase.halt[0]) / args.speed / 1000
        note(f"coinbase halt: {HALT_H:g} simulated h = {halt_real_s:.0f} s real "
             f"(stale-feed watchdog {STALE_FEED_S:g} s)")  # fmt: skip
    first = min(s.first_open_ms for v in venues for s in v.sources)
    models = [DEFAULT_MODEL.read_bytes() if DEFAULT_MODEL.exists() else b"",
              build_model(version="fixture", window=60, horizon=15)]  # fmt: skip
    models = [m for m in models if m]
    registry = tmp / "registry"
    publish_model(registry, "m0", models[0])
    redis, mqtt = redis_server(tmp), mosquitto(tmp)
    redis.start()
    mqtt.start()
    metrics_port = free_port()
    forecasts: dict[tuple[str, str], set[int]] = defaultdict(set)
    duplicates = 0
    rss: list[tuple[float, float, float]] = []  # (simulated hours, real minutes, MB)
    faults: dict[str, int] = defaultdict(int)
    notices: list[float] = []  # time.monotonic() of each Binance shutdown notice
    ban_at_h = (args.days * 24 / 2) if binance is not None else None
    ban_seen = 0.0
    halt_real: list[float] = []  # time.monotonic() when Coinbase's clock entered, left the halt
    daemon: asyncio.subprocess.Process | None = None
    log = (tmp / "daemon.log").open("wb")
    t0 = time.monotonic()
    try:
        async with contextlib.AsyncExitStack() as stack:
            for v in venues:
                v.next_drop_h = DROP_FIRST_H[v.name]
                v.server = await stack.enter_async_context(
                    ReplayServer(
                        v.sources,
                        speed=args.speed,
                        start_ms=first,
                        loop=v.loop,
                        dialect=v.name,
                        connection_age_s=CUT_AFTER_S if v.name == "binance" else None,
                    )
                )

            async def subscriber() -> None:
                nonlocal duplicates
                async with aiomqtt.Client("127.0.0.1", mqtt.port) as c:
                    await c.subscribe("tickcast/forecast/#", qos=1)
                    async for m in c.messages:
                        *_, exchange, symbol = str(m.topic).split("/")
                        assert isinstance(m.payload, bytes)
                        payload = json.loads(m.payload)
                        bar_time = int(
                            datetime.fromisoformat(
                                payload["bar_time"].replace("Z", "+00:00")
                            ).timestamp()
                            * 1000
                        )
                        seen = forecasts[(exchange, symbol)]
                        if bar_time in seen:
                            duplicates += 1
                        seen.add(bar_time)

            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "TICKCAST_SYMBOLS": ",".join(
                    f"{v.name}:{s.symbol}" for v in venues for s in v.sources
                ),
                "TICKCAST_WS_URLS": json.dumps(
                    {v.name: v.replay.ws_url + WS_PATHS[v.name] for v in venues}
                ),
                "TICKCAST_REST_URLS": json.dumps({v.name: v.replay.rest_url for v in venues}),
                "TICKCAST_CLOCK": "watermark",
                "TICKCAST_GRACE_MS": str(GRACE_MS),
                "TICKCAST_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
                "TICKCAST_WINDOW_CAP": str(int(args.days * 1440) + 1440),
                "TICKCAST_MQTT_URL": f"mqtt://127.0.0.1:{mqtt.port}",
                "TICKCAST_MODEL_REGISTRY": str(registry),
                "TICKCAST_MODEL_POLL_S": "1",
                "TICKCAST_METRICS_PORT": str(metrics_port),
                "TICKCAST_TICK_INTERVAL_S": "0.05",
                "TICKCAST_STALE_FEED_S": str(STALE_FEED_S),
                "TICKCAST_LOG_LEVEL": "WARNING",
            }
            if binance is not None:
                age = BINANCE.max_connection_age_s
                assert age is not None
                env["TICKCAST_ROTATE_MARGIN_S"] = str(age - ROTATE_AFTER_S)

            def binance_settled() -> bool:
                """No Binance connection or REST request for QUIET_GAP_S: a fault now cannot
                be confused with what came before."""
                assert binance is not None
                server = binance.replay
                last = max(
                    server.connection_attempts[-1] if server.connection_attempts else 0.0,
                    server.rest_log[-1].arrived if server.rest_log else 0.0,
                    notices[-1] if notices else 0.0,
                    binance.drops[-1] if binance.drops else 0.0,
                )
                return time.monotonic() - last >= QUIET_GAP_S

            async def drop(v: Venue) -> None:
                v.next_drop_h += DROP_EVERY_H[v.name]
                faults["drops"] += 1
                faults[f"{v.name}.drops"] += 1
                server = v.replay
                dropped_at = server.clock_ms()
                v.drops.append(time.monotonic())
                await server.drop_connections(refuse_s=0.3)
                await wait_reconnected(server)
                reconnected_at = server.clock_ms() + 2 * MINUTE_MS
                # minutes still open at the drop (end + grace not yet reached) close together
                # with the outage's at the first trade after the reconnect
                v.outages.append((dropped_at - 2 * MINUTE_MS - GRACE_MS, reconnected_at))

            async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
                sub_task = tg.create_task(subscriber(), name="soak-subscriber")
                await asyncio.sleep(0.5)
                daemon = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "streamer", "run", env=env, cwd=REPO,
                    stdout=log, stderr=log,
                )  # fmt: skip
                t0 = time.monotonic()
                primary = venues[0]
                next_redis, next_swap = REDIS_EVERY_H, SWAP_EVERY_H
                next_shutdown = SHUTDOWN_FIRST_H
                swaps = 0
                budget_s = args.max_minutes * 60
                while (
                    not all(v.replay.finished for v in venues) and time.monotonic() - t0 < budget_s
                ):
                    await asyncio.sleep(1.0)
                    if daemon.returncode is not None:
                        raise RuntimeError(f"daemon exited with {daemon.returncode}")
                    sim_h = primary.sim_h(first)
                    rss.append((sim_h, (time.monotonic() - t0) / 60, rss_mb(daemon.pid)))
                    with contextlib.suppress(aiohttp.ClientError):
                        samples = await scrape(session, metrics_port)
                        banned = total(samples, "tickcast_rest_banned_until_seconds")
                        ban_seen = max(ban_seen, banned)
                    if coinbase is not None and coinbase.halt is not None:
                        now_ms = coinbase.replay.clock_ms()
                        if len(halt_real) == 0 and now_ms >= coinbase.halt[0]:
                            halt_real.append(time.monotonic())
                        if len(halt_real) == 1 and now_ms >= coinbase.halt[1]:
                            halt_real.append(time.monotonic())
                    for v in venues:
                        if v.replay.finished or v.sim_h(first) < v.next_drop_h:
                            continue
                        if v is binance:
                            if not binance_settled():
                                continue
                            if ban_at_h is not None and v.sim_h(first) >= ban_at_h:
                                ban_at_h = None
                                faults["rest_418"] += 1
                                v.replay.faults.retry_after_s = BAN_S
                                v.replay.faults.rest_418 = 1
                        if v.halt is not None:
                            h = (v.halt[0] - first) / HOUR_MS, (v.halt[1] - first) / HOUR_MS
                            if h[0] - 1 <= v.next_drop_h <= h[1] + 1:
                                v.next_drop_h += DROP_EVERY_H[v.name]  # none in the halt
                                continue
                        await drop(v)
                    if (
                        binance is not None
                        and not binance.replay.finished
                        and binance.sim_h(first) >= next_shutdown
                        and binance_settled()
                    ):
                        next_shutdown += SHUTDOWN_EVERY_H
                        faults["binance.server_shutdowns"] += 1
                        notices.append(time.monotonic())
                        await binance.replay.announce_shutdown(SHUTDOWN_CLOSE_S)
                    if sim_h >= next_swap:
                        next_swap += SWAP_EVERY_H
                        swaps += 1
                        faults["model_swaps"] += 1
                        publish_model(registry, f"m{swaps}", models[swaps % len(models)])
                    if sim_h >= next_redis:
                        next_redis += REDIS_EVERY_H
                        faults["redis_restarts"] += 1
                        redis.stop()
                        await asyncio.sleep(2.0)
                        redis.start()
                real_s = time.monotonic() - t0
                for v in venues:
                    v.replayed_ms = v.replay.clock_ms() - first
                # let the daemon finish what was sent: its trade count stops moving
                last, still = -1.0, 0
                while still < 3:
                    await asyncio.sleep(1.0)
                    now = total(await scrape(session, metrics_port), "tickcast_trades_total")
                    still = still + 1 if now == last else 0
                    last = now
                samples = await scrape(session, metrics_port)
                await asyncio.sleep(2.0)  # the last forecasts reach the subscriber
                daemon.send_signal(signal.SIGTERM)
                await asyncio.wait_for(daemon.wait(), 30)
                sub_task.cancel()
    finally:
        if daemon is not None and daemon.returncode is None:
            daemon.kill()
        log.close()

    # ---- checks ----
    client = aioredis.from_url(f"redis://127.0.0.1:{redis.port}/0")
    tallies: dict[str, Tally] = {}
    forecast_from = first + 61 * MINUTE_MS  # the model's window (60) is full from here on
    try:
        for v in venues:
            tally = tallies[v.name] = Tally()
            watermark = first + v.replayed_ms
            span_ms = v.replay.span_ms
            laps = v.replayed_ms // span_ms + 1 if v.loop else 1
            explained = list(v.outages)
            if v.halt is not None:  # the minutes closing in the halt close together at its end
                explained.append((v.halt[0] - MINUTE_MS - GRACE_MS, v.halt[1] + 2 * MINUTE_MS))
            for source in v.sources:
                truth = expected(source, v.name, laps, span_ms)
                raw = await client.lrange(bars_key(v.name, source.symbol), 0, -1)
                key = incomplete_key(v.name, source.symbol)
                marks = {int(m) for m in await client.zrange(key, 0, -1)}  # type: ignore[arg-type]
                stored: dict[int, Bar] = {}
                for item in raw:
                    bar = decode_bar(v.name, source.symbol, item)
                    if bar.open_time_ms in stored:
                        tally.different += 1  # stored twice
                    stored[bar.open_time_ms] = bar
                closed = [t for t in truth if t + MINUTE_MS + GRACE_MS <= watermark - 15_000]
                for t in closed:
                    tally.checked += 1
                    want = truth[t]
                    tally.quiet += want.trades == 0
                    found = stored.get(t)
                    if found is None:
                        tally.lost += 1
                        continue
                    got = comparable(found)
                    if v.name == "coinbase" and found.trades == 0 and want.trades > 0:
                        # a bar from Coinbase's candles, which carry no trade count
                        tally.from_rest += 1
                        if not any(a <= t <= b for a, b in v.outages):
                            tally.from_rest_outside += 1
                        got = (*got[:5], want.trades)
                    if got != comparable(want):
                        tally.different += 1
                        if tally.different <= 3:
                            note(f"{v.name}:{source.symbol} {t}: {found} != {want}")
                    if t in marks:
                        tally.incomplete += 1
                due = [t for t in closed if t >= forecast_from]
                tally.due += len(due)
                seen = forecasts[(v.name, source.symbol)]
                missing = [t for t in due if t not in seen]
                tally.missing += len(missing)
                unexplained = [t for t in missing if not any(a <= t <= b for a, b in explained)]
                tally.missing_outside += len(unexplained)
                if unexplained:
                    hours = [round((t - first) / HOUR_MS, 3) for t in unexplained[:5]]
                    note(f"{v.name}:{source.symbol}: no forecast at simulated hours {hours}")
    finally:
        await client.aclose()
        redis.stop()
        mqtt.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            note(f"kept {tmp}")

    sum_of = lambda attr: sum(getattr(t, attr) for t in tallies.values())  # noqa: E731
    sim_days = max(v.replayed_ms for v in venues) / (1440 * MINUTE_MS)
    if args.trace is not None:
        with args.trace.open("w") as f:
            f.write("simulated_hours,real_minutes,rss_mb\n")
            f.writelines(f"{h:.3f},{m:.3f},{mb:.1f}\n" for h, m, mb in rss)
    after = [(h, m, mb) for h, m, mb in rss if h >= args.warmup_hours]
    figure("simulated_days", round(sim_days, 2), "days", 7.0, "higher")
    figure("venues", len(venues), "venues", 3.0, "higher")
    figure("symbols", sum(len(v.sources) for v in venues), "symbols", 50.0, "higher")
    figure("real_minutes", round(real_s / 60, 1), "min", 20.0, "lower")
    figure("rss_start", round(rss[0][2], 1), "MB", None, "lower")
    figure("rss_end", round(rss[-1][2], 1), "MB", None, "lower")
    figure("rss_max", round(max(mb for *_, mb in rss), 1), "MB", 150.0, "lower")
    figure("rss_slope_after_warmup", round(slope([(h, mb) for h, _, mb in after]), 4),
           "MB/simulated-hour", 0.0, "lower")  # fmt: skip
    half = [(h, mb) for h, _, mb in rss if h >= (args.warmup_hours + sim_days * 24) / 2]
    figure("rss_slope_last_half", round(slope(half), 4), "MB/simulated-hour", 0.0, "lower")
    per_minute = round(slope([(m, mb) for _, m, mb in after]), 4)
    figure("rss_slope_after_warmup_per_real_minute", per_minute, "MB/real-minute", 0.0, "lower")
    figure("bars_checked", sum_of("checked"), "bars", None, "higher")
    figure("bars_lost", sum_of("lost"), "bars", 0, "lower")
    figure("bars_different_or_twice", sum_of("different"), "bars", 0, "lower")
    figure("bars_left_incomplete", sum_of("incomplete"), "bars", 0, "lower")
    for v in venues:
        t = tallies[v.name]
        figure(f"{v.name}.bars_checked", t.checked, "bars", None, "higher")
        figure(f"{v.name}.bars_lost", t.lost, "bars", 0, "lower")
        figure(f"{v.name}.bars_different_or_twice", t.different, "bars", 0, "lower")
        figure(f"{v.name}.bars_left_incomplete", t.incomplete, "bars", 0, "lower")
        figure(f"{v.name}.drops", faults[f"{v.name}.drops"], "faults", None, "higher")
        figure(f"{v.name}.reconnects_stale",
               total(samples, "tickcast_feed_reconnects_total", exchange=v.name, cause="stale"),
               "reconnects", 0, "lower")  # fmt: skip
        figure(f"{v.name}.rest_requests", len(v.replay.rest_log), "requests", None, "lower")
        figure(f"{v.name}.heartbeats_sent", v.replay.heartbeats_sent, "frames", None, "higher")
    figure("redis_bars_dropped", total(samples, "tickcast_redis_dropped_bars_total"), "bars", 0,
           "lower")  # fmt: skip
    figure("forecast_minutes_due", sum_of("due"), "forecasts", None, "higher")
    # on the watermark clock the minutes of an outage (and of the Coinbase halt) close together
    # at the first trade after it and get one forecast, the newest; every other minute close
    # must have one
    figure("forecasts_missing_in_outages", sum_of("missing") - sum_of("missing_outside"),
           "forecasts", None, "lower")  # fmt: skip
    figure("forecasts_missing_outside_outages", sum_of("missing_outside"), "forecasts", 0,
           "lower")  # fmt: skip
    figure("forecasts_duplicated", duplicates, "forecasts", 0, "lower")
    dropped = "tickcast_trades_dropped_total"
    duplicate = total(samples, dropped, reason="duplicate")
    figure("trades_dropped_duplicate", duplicate, "trades", None, "lower")
    figure("trades_dropped_other", total(samples, dropped) - duplicate, "trades", 0, "lower")
    figure("frames_rejected", total(samples, "tickcast_frames_rejected_total"), "frames", 0,
           "lower")  # fmt: skip
    figure("bars_backfilled", total(samples, "tickcast_backfill_bars_total"), "bars", None,
           "higher")  # fmt: skip
    figure("repairs_given_up", total(samples, "tickcast_repairs_given_up_total"), "repairs", 0,
           "lower")  # fmt: skip
    figure("faults_drops", faults["drops"], "faults", None, "higher")
    figure("faults_redis_restarts", faults["redis_restarts"], "faults", None, "higher")
    figure("faults_model_swaps", faults["model_swaps"], "faults", None, "higher")
    figure("model_reloads", total(samples, "tickcast_model_reloads_total"), "reloads", None,
           "higher")  # fmt: skip
    figure("model_refusals", total(samples, "tickcast_model_reload_failures_total"), "refusals",
           0, "lower")  # fmt: skip
    if binance is not None:
        server = binance.replay
        reconnects = "tickcast_feed_reconnects_total"
        seen = attribute_rest(server, t0, binance.drops, notices)
        figure("binance.rotations", total(samples, reconnects, exchange="binance",
               cause="rotate"), "reconnects", None, "higher")  # fmt: skip
        figure("binance.rotation_connections", seen["connections_rotate"], "connections", None,
               "higher")  # fmt: skip
        figure("binance.age_cuts", server.age_cuts, "connections", 0, "lower")
        figure("binance.server_shutdowns", faults["binance.server_shutdowns"], "notices", None,
               "higher")  # fmt: skip
        figure("binance.shutdown_reconnects", total(samples, reconnects, exchange="binance",
               cause="server_shutdown"), "reconnects", None, "higher")  # fmt: skip
        # 0 minutes left incomplete by a rotation or a notice: none was followed by REST
        figure("binance.rest_requests_after_rotations",
               seen["rest_after_rotate"] + seen["rest_after_server_shutdown"], "requests", 0,
               "lower")  # fmt: skip
        figure("binance.rest_requests_after_drops", seen["rest_after_drop"], "requests", None,
               "lower")  # fmt: skip
        bans = [e.arrived for e in server.rest_log if e.status == 418]
        during = sum(1 for e in server.rest_log for b in bans if b < e.arrived < b + BAN_S - 0.05)
        figure("binance.rest_418_answers", len(bans), "answers", float(faults["rest_418"]),
               "higher")  # fmt: skip
        figure("binance.rest_requests_during_ban", during, "requests", 0, "lower")
        figure("binance.ban_in_metric", int(ban_seen > 0), "seen", 1, "higher")
        figure("binance.rate_limit_closes", server.rate_limit_closes, "connections", 0, "lower")
    if coinbase is not None:
        t = tallies["coinbase"]
        figure("coinbase.quiet_minutes", t.quiet, "bars", None, "higher")
        halt_minutes = 0 if coinbase.halt is None else len(coinbase.sources) * int(HALT_H * 60)
        figure("coinbase.halt_minutes", halt_minutes, "bars", None, "higher")
        in_halt = 0
        if len(halt_real) == 2:
            in_halt = sum(
                1 for e in coinbase.replay.rest_log if halt_real[0] <= e.arrived <= halt_real[1]
            )
        figure("coinbase.rest_requests_in_halt", in_halt, "requests", 0, "lower")
        figure("coinbase.bars_from_rest", t.from_rest, "bars", None, "higher")
        figure("coinbase.bars_from_rest_outside_outages", t.from_rest_outside, "bars", 0, "lower")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venues", default=",".join(VENUES), help="comma-separated")
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--symbols", type=int, default=50, help="over all venues")
    parser.add_argument("--speed", type=float, default=700.0, help="data ms per wall ms")
    parser.add_argument("--max-minutes", type=float, default=18.0, help="replay time budget")
    parser.add_argument("--warmup-hours", type=float, default=WARMUP_H, help="simulated")
    parser.add_argument("--trace", type=Path, help="write the RSS samples to this CSV file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    main()
