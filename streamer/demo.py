"""``tickcast-streamer demo``: live forecasts from the bundled real-data replay, no outside service.

It starts the replay exchange on loopback with the bundled real 1-minute data, accelerated; the
streamer warms its windows through the real REST backfill path, serves the bundled default model
and keeps its windows in memory (or in Redis / MQTT when ``TICKCAST_REDIS_URL`` /
``TICKCAST_MQTT_URL`` are set). Forecasts go to a live terminal view, or one plain line per
forecast when the output is not a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from streamer.core.types import MINUTE_MS, Forecast
from streamer.io.forecaster import ForecastSink
from streamer.replay.data import bundled_kline_paths, load_source
from streamer.replay.server import ReplayServer
from streamer.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "default" / "model.onnx"
SHOWN_HORIZONS = (1, 5, 15)
# real seconds of processing lag the grace must absorb at the chosen speed
LAG_ALLOWANCE_S = 0.2


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _fmt(value: float) -> str:
    return f"{value:,.2f}" if value >= 100 else f"{value:,.4f}"


class ConsoleView:
    """Keeps the newest forecast and skill per symbol; renders a table or prints lines."""

    def __init__(self, live: bool, out: TextIO | None = None) -> None:
        self.live = live
        self.out = out or sys.stdout
        self.latest: dict[tuple[str, str], Forecast] = {}
        self.skill: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
        self.forecasts = 0
        self.first_forecast_at: float | None = None

    # ForecastSink
    def publish_forecast(self, forecast: Forecast, closed_at: float) -> None:
        key = (forecast.exchange, forecast.symbol)
        self.latest[key] = forecast
        self.forecasts += 1
        if self.first_forecast_at is None:
            self.first_forecast_at = time.monotonic()
        if not self.live:
            self.out.write(self.line(forecast) + "\n")
            self.out.flush()

    def publish_skill(
        self, exchange: str, symbol: str, figures: dict[int, dict[str, float]]
    ) -> None:
        self.skill[(exchange, symbol)] = figures

    async def wait_sent(self) -> None:
        return None

    def _horizons(self, f: Forecast) -> list[int]:
        return [h for h in SHOWN_HORIZONS if h <= f.horizon]

    def line(self, f: Forecast) -> str:
        lo, mid, hi = 0, f.quantile_levels.index(0.5), len(f.quantile_levels) - 1
        parts = [f"{_utc(f.bar_time_ms)} {f.exchange}:{f.symbol} close {_fmt(f.last_close)}"]
        skill = self.skill.get((f.exchange, f.symbol), {})
        for h in self._horizons(f):
            row = f.values[h - 1]
            s = skill.get(h, {}).get("skill", math.nan)
            shown = "n/a" if math.isnan(s) else f"{s:+.2f}"
            parts.append(
                f"| +{h}m {_fmt(row[mid])} [{_fmt(row[lo])} .. {_fmt(row[hi])}] skill {shown}"
            )
        return " ".join(parts)

    def table(self) -> Table:
        table = Table(title="tickcast demo: forecasts from the bundled real-data replay")
        table.add_column("symbol")
        table.add_column("bar (UTC)")
        table.add_column("last close", justify="right")
        for h in SHOWN_HORIZONS:
            table.add_column(f"+{h} min median [band]", justify="right")
            table.add_column(f"skill +{h}", justify="right")
        for key in sorted(self.latest):
            f = self.latest[key]
            lo, mid, hi = 0, f.quantile_levels.index(0.5), len(f.quantile_levels) - 1
            skill = self.skill.get(key, {})
            cells = [f"{key[0]}:{key[1]}", _utc(f.bar_time_ms), _fmt(f.last_close)]
            for h in SHOWN_HORIZONS:
                if h > f.horizon:
                    cells += ["", ""]
                    continue
                row = f.values[h - 1]
                s = skill.get(h, {}).get("skill", math.nan)
                n = skill.get(h, {}).get("n", 0)
                cells.append(f"{_fmt(row[mid])} [{_fmt(row[lo])} .. {_fmt(row[hi])}]")
                cells.append("…" if math.isnan(s) else f"{s:+.3f} (n={int(n)})")
            table.add_row(*cells)
        table.caption = (
            "skill = 1 - model MAE / persistence MAE over the forecasts realised so far; "
            "> 0 beats 'the price stays where it is'"
        )
        return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--for",
        dest="duration_s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop cleanly after this many seconds (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="replay speed factor: data minutes per real minute (default 60: a minute a second)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help=f"ONNX model file or registry (default: {DEFAULT_MODEL.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--warm-minutes",
        type=int,
        default=240,
        help="minutes of history fetched over REST before streaming starts (default 240)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="one plain line per forecast, even on a terminal"
    )


async def run_demo(
    args: argparse.Namespace,
    install_signals: Callable[[Callable[[], None]], None] | None = None,
    out: TextIO | None = None,
) -> ConsoleView:
    from streamer.app import Streamer

    started = time.monotonic()
    out = out or sys.stdout
    model = args.model or str(DEFAULT_MODEL)
    if not args.model and not DEFAULT_MODEL.is_file():
        raise SystemExit(f"the default model {DEFAULT_MODEL} is missing; pass --model PATH")
    sources = [load_source(p) for p in bundled_kline_paths()]
    first = max(s.first_open_ms for s in sources)
    start_ms = first + args.warm_minutes * MINUTE_MS
    live = out.isatty() and not args.plain
    view = ConsoleView(live=live, out=out)
    grace_ms = max(2000, int(args.speed * LAG_ALLOWANCE_S * 1000))
    async with ReplayServer(sources, speed=args.speed, start_ms=start_ms) as server:
        overrides: dict[str, Any] = {
            "symbols": [f"binance:{s.symbol}" for s in sources],
            "ws_urls": {"binance": server.ws_url},
            "rest_urls": {"binance": server.rest_url},
            "model_registry": model,
            "grace_ms": grace_ms,
            "tick_interval_s": 0.05,
            "backfill_max_minutes": args.warm_minutes,
            "metrics_port": 0,
            "model_max_age_s": None,  # the bundled model is trained on 2023 data on purpose
        }
        settings = load_settings(**overrides)
        sink: ForecastSink = view
        streamer = Streamer(settings, clock=server.clock_ms, sink=sink)
        if install_signals is not None:
            install_signals(streamer.request_stop)
        console = Console(file=out)
        if not live:
            print(
                f"tickcast demo: replaying {', '.join(s.symbol for s in sources)} from "
                f"{_utc(start_ms)} UTC at {args.speed:g}x; model {model}",
                file=out,
                flush=True,
            )
        task = asyncio.create_task(streamer.run(), name="streamer")
        try:
            with contextlib.ExitStack() as stack:
                display = None
                if live:
                    display = stack.enter_context(
                        Live(view.table(), console=console, refresh_per_second=4)
                    )
                while not task.done():
                    elapsed = time.monotonic() - started
                    if args.duration_s is not None and elapsed >= args.duration_s:
                        break
                    if server.finished:
                        break
                    if display is not None:
                        display.update(view.table())
                    await asyncio.wait({task}, timeout=0.25)
        finally:
            streamer.request_stop()
            await task
    if view.first_forecast_at is not None and not live:
        print(
            f"tickcast demo: {view.forecasts} forecasts; the first came "
            f"{view.first_forecast_at - started:.1f} s after start",
            file=out,
            flush=True,
        )
    return view
