"""Online calibration live: the shipped model on venues and periods it never saw, through the
real streamer, with calibration off and on.

The bundled model (models/default/model.onnx) was trained on Binance spot minutes of
2023-03/05. Two replays it never saw, real 1-minute bars bundled in
streamer/replay/data/out_of_period/ (provenance in streamer/replay/data/SOURCES.md):

* ``coinbase_2017``: Coinbase (GDAX) BTC-USD and ETH-USD, 2017-09-03..04, over the Coinbase
  dialect: another venue, six years earlier, a far more volatile market;
* ``binance_usdm_perp_2025``: Binance USD-M perpetual BTCUSDT, ETHUSDT and SOLUSDT,
  2025-05-05..06, over the Binance dialect: another market (futures), two years later.

Each replay runs twice in this process, ``TICKCAST_CALIBRATION=off`` then ``on``: the replay
exchange (trades synthesised from the klines, four a minute) feeds a ``Streamer`` on the
watermark clock with the model as a one-file registry and an evaluation window longer than the
replay; a sink keeps every forecast the streamer publishes. The first hour warms the windows
over REST; every minute after it is forecast, and scored once its target bar closes.

Figures, per replay, horizon (1, 5, 15 minutes) and mode: ``coverage_pct``, the share of
realised forecasts whose *published* 0.1-0.9 band held the close (computed here from what the
sink got, against the replayed closes: what a subscriber saw), nominal 80, and ``gap_pts``, its
distance from 80 (target with calibration on: at most 3 points); and, from /metrics,
the streamer's own ``tickcast_calibration_coverage_ratio`` of the raw and the calibrated band
(notes: they must agree with the published one of the matching mode). The calibration starts
from nothing at the first forecast, so the figures include its learning.

    .venv/bin/python bench/bench_calibration.py [--speed 6000] [--replay coinbase_2017 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from benchkit import figure, note
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' one bounded wait

from support.waits import wait_until  # noqa: E402

from streamer.app import Streamer  # noqa: E402
from streamer.core.types import MINUTE_MS, Forecast  # noqa: E402
from streamer.io.sinks import CollectingSink  # noqa: E402
from streamer.replay.data import DATA_DIR, Source, load_source  # noqa: E402
from streamer.replay.server import ReplayServer  # noqa: E402
from streamer.settings import load_settings  # noqa: E402

NAME = "calibration"
MODEL = REPO / "models" / "default" / "model.onnx"
DATA = DATA_DIR / "out_of_period"
HORIZONS = (1, 5, 15)
NOMINAL_PCT = 80.0
GAP_TARGET_PTS = 3.0  # calibrated: within 3 points of nominal
WARMUP_MIN = 60  # the model's window, backfilled over REST before the replay streams


@dataclass(frozen=True)
class Replay:
    name: str
    venue: str
    files: tuple[str, ...]


REPLAYS = (
    Replay(
        "coinbase_2017",
        "coinbase",
        (
            "BTC-USD_1m_20170903_20170904_coinbase.csv.gz",
            "ETH-USD_1m_20170903_20170904_coinbase.csv.gz",
        ),
    ),
    Replay(
        "binance_usdm_perp_2025",
        "binance",
        tuple(
            f"{s}_1m_20250505_20250506_binance_usdm_perp.csv.gz"
            for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")
        ),
    ),
)


@dataclass
class Run:
    published_pct: dict[int, float]  # horizon -> coverage of the published band, %
    below_pct: dict[int, tuple[float, float]]  # horizon -> % at or below its 0.1 and 0.9
    realised: dict[int, int]
    metrics_pct: dict[tuple[int, str], float]  # (horizon, band) -> /metrics coverage, %
    bands: set[str]
    rounds: int
    forecasts: int


def published_coverage(
    forecasts: list[Forecast], closes: dict[tuple[str, int], float], last_closed: int
) -> tuple[dict[int, float], dict[int, tuple[float, float]], dict[int, int]]:
    """Per horizon: % of the realised forecasts inside the published 0.1-0.9 band (the lower
    bound excluded, as the streamer counts), % at or below its 0.1 and its 0.9, and how many."""
    below_low: dict[int, int] = defaultdict(int)
    below_high: dict[int, int] = defaultdict(int)
    count: dict[int, int] = defaultdict(int)
    for f in forecasts:
        for h in HORIZONS:
            target = f.bar_time_ms + h * MINUTE_MS
            if target > last_closed:
                continue
            actual = closes[(f.symbol, target)]
            below_low[h] += actual <= f.values[h - 1][0]
            below_high[h] += actual <= f.values[h - 1][-1]
            count[h] += 1
    inside = {h: 100.0 * (below_high[h] - below_low[h]) / count[h] for h in HORIZONS}
    below = {
        h: (100.0 * below_low[h] / count[h], 100.0 * below_high[h] / count[h]) for h in HORIZONS
    }
    return inside, below, dict(count)


def coverage_samples(text: str) -> dict[tuple[int, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == "tickcast_calibration_coverage_ratio":
            for s in family.samples:
                out[(int(s.labels["horizon"]), s.labels["band"])] = 100.0 * s.value
    return out


async def run_once(replay: Replay, calibration: str, speed: float) -> Run:
    sources: list[Source] = [load_source(DATA / f) for f in replay.files]
    first = min(s.first_open_ms for s in sources)
    span_s = (max(s.end_ms for s in sources) - first) // 1000
    last_closed = min(s.klines[-2].open_time_ms for s in sources)
    sink = CollectingSink()
    start = first + WARMUP_MIN * MINUTE_MS
    async with ReplayServer(sources, speed=speed, start_ms=start, dialect=replay.venue) as server:
        settings = load_settings(
            symbols=[f"{replay.venue}:{s.symbol}" for s in sources],
            ws_urls={replay.venue: server.ws_url},
            rest_urls={replay.venue: server.rest_url},
            clock="watermark",
            grace_ms=2000,
            model_registry=str(MODEL),
            model_max_age_s=None,
            eval_horizons=list(HORIZONS),
            eval_window_s=2 * span_s,
            calibration=calibration,
            metrics_port=0,
            tick_interval_s=0.05,
            log_level="WARNING",
        )
        streamer = Streamer(settings, sink=sink)
        task = asyncio.create_task(streamer.run())
        try:
            async with asyncio.timeout(60):
                await streamer.started.wait()
            await server.wait_finished()
            forecaster = streamer.serving.forecaster

            def realised_all() -> bool:
                calibrator = forecaster.calibrator
                return calibrator is not None and calibrator.coverage.now_ms == last_closed

            await wait_until(realised_all, 60, "the last closed minute's realised forecasts")
            text = streamer.metrics.render().decode()
        finally:
            streamer.request_stop()
            await task
    closes = {(s.symbol, k.open_time_ms): float(k.close) for s in sources for k in s.klines}
    published, below, realised = published_coverage(sink.forecasts, closes, last_closed)
    return Run(
        published,
        below,
        realised,
        coverage_samples(text),
        {f.band for f in sink.forecasts},
        forecaster.rounds_total,
        len(sink.forecasts),
    )


async def main(args: argparse.Namespace) -> None:
    chosen = [r for r in REPLAYS if not args.replay or r.name in args.replay]
    for replay in chosen:
        runs = {mode: await run_once(replay, mode, args.speed) for mode in ("off", "on")}
        for mode, run in runs.items():
            note(
                f"{replay.name} calibration {mode}: {run.forecasts} forecasts in {run.rounds} "
                f"rounds, published band {sorted(run.bands)}, realised {run.realised}"
            )
            for h in HORIZONS:
                bench = f"{NAME}.{replay.name}.h{h}.{mode}"
                pct = run.published_pct[h]
                figure(f"{bench}.coverage_pct", round(pct, 2), "%", None)
                gap_target = GAP_TARGET_PTS if mode == "on" else None
                figure(f"{bench}.gap_pts", round(abs(pct - NOMINAL_PCT), 2), "pts", gap_target)
                low, high = run.below_pct[h]
                note(f"{bench}: at or below the 0.1 level {low:.2f} %, the 0.9 level {high:.2f} %")
        for h in HORIZONS:
            metrics = {
                f"{mode}.{band}": round(runs[mode].metrics_pct[(h, band)], 2)
                for mode in ("off", "on")
                for band in ("raw", "calibrated")
            }
            note(f"{replay.name} h={h} /metrics coverage %: {json.dumps(metrics)}")
    note(
        "coverage_pct: share of realised forecasts whose published 0.1-0.9 band held the close "
        "(from the sink, against the replayed closes); /metrics: the streamer's raw and "
        "calibrated figures (raw = what off publishes, calibrated = what on publishes)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=6000.0, help="data ms per wall ms")
    parser.add_argument("--replay", action="append", choices=[r.name for r in REPLAYS])
    asyncio.run(main(parser.parse_args()))
