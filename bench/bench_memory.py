"""Streamer resident memory with 1,000 symbols and a loaded model, as deployed (target 150 MB).

Each measurement runs in a fresh subprocess that builds the real ``Streamer`` (Redis and MQTT
configured, as deployed, so bars live in Redis and the process holds only its in-memory windows;
no connection is made), loads the model into its ``ModelServer``, fills its ``Windows`` to
``window_cap`` bars for each of 1,000 symbols, gives every symbol an open minute in a
``BarAggregator``, then runs 20 minute closes through the real forecaster and ``MqttSink`` so
the online evaluator holds its steady state (pending forecasts up to the longest horizon,
rolling sums) and the publisher its newest payload per topic (the queue is emptied after each
close, as a connected publisher would). VmRSS is read from /proc/self/status after each step.

Bars are real Binance 1-minute klines of BTCUSDT, ETHUSDT and SOLUSDT (bundled in
streamer/replay/data/) spread over 1,000 symbol names at different offsets; every price is its
own float object, as bars parsed from trades are. The model is models/default/model.onnx when it
exists, else the torch-free fixture model (tests/fixtures/models.py, window 60, horizon 15).

The deployed default (``TICKCAST_WINDOW_MEMORY_BARS=240``) is measured first, step by step, then
the Redis cap (1440) held in memory as well, for comparison.

    .venv/bin/python bench/bench_memory.py [--symbols 1000] [--caps 240 1440] [--model F]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import benchkit

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "default" / "model.onnx"
NAME = "memory"
TARGET_MB = 150.0
CLOSES = 20


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def figure(name: str, value: float, target: float | None = None, unit: str = "MB") -> None:
    benchkit.figure(f"{NAME}.{name}", round(value, 1), unit, target)


# ---- the measured process -----------------------------------------------------------------


async def child(n_symbols: int, cap: int, data: Path, model_bytes: bytes) -> dict[str, Any]:
    """Build and fill the streamer; VmRSS after each step. Imports only what the streamer does."""
    stages: dict[str, float] = {"python": rss_mb()}
    import numpy as np

    from streamer.io.allocator import pin_mmap_threshold

    pin_mmap_threshold()  # as `tickcast-streamer run` does first

    from streamer.app import Streamer
    from streamer.core.bars import BarAggregator
    from streamer.core.types import MINUTE_MS, Bar, Trade
    from streamer.io.model import load_model
    from streamer.settings import load_settings

    stages["imports"] = rss_mb()
    ohlcv = np.load(data)  # [series, minutes, 5] float64: 0.7 MB, not Python objects
    minutes = ohlcv.shape[1]
    names = [f"S{i:04d}USDT" for i in range(n_symbols)]

    def row(i: int, minute: int) -> list[float]:
        values: list[float] = ohlcv[i % len(ohlcv), (minute + 37 * i) % minutes].tolist()
        return values  # fresh float objects, as bars parsed from the wire have

    def bar(i: int, minute: int) -> Bar:
        o, h, lo, c, v = row(i, minute)
        return Bar("binance", names[i], minute * MINUTE_MS, o, h, lo, c, v, 4)

    settings = load_settings(
        symbols=[f"binance:{s}" for s in names],
        window_memory_bars=cap,
        redis_url="redis://127.0.0.1:1/0",  # as deployed; never connected here
        mqtt_url="mqtt://127.0.0.1:1",
        metrics_port=0,
    )
    streamer = Streamer(settings)
    stages["streamer"] = rss_mb()

    model = load_model(model_bytes, source="bench")
    del model_bytes
    streamer.serving.server.swap(model)
    stages["model"] = rss_mb()

    warm = max(cap, model.spec.window)
    for i in range(n_symbols):
        streamer.windows.apply([bar(i, m) for m in range(warm)])
    stages["windows"] = rss_mb()

    # steady state of the forecaster: closes scored, pending forecasts, newest payloads
    publisher = streamer.publisher
    assert publisher is not None
    forecaster = streamer.serving.forecaster
    for minute in range(warm, warm + CLOSES):
        bars = [bar(i, minute) for i in range(n_symbols)]
        streamer.windows.apply(bars)
        forecaster.on_bars(bars)
        await forecaster.publish_skill(await forecaster.forecast_round())
        publisher.queue.drop_queued()  # drained, as a connected publisher would leave it
    del bars
    stages["forecaster"] = rss_mb()

    # one open minute per symbol in the exchange's aggregator: the replay's four trades
    agg = BarAggregator("binance", grace_ms=settings.grace_ms)
    streamer.aggregators["binance"] = agg
    minute = warm + CLOSES
    for i in range(n_symbols):
        last = streamer.windows.last(("binance", names[i]))
        assert last is not None
        agg.seed(last)
        o, h, lo, c, v = row(i, minute)
        for j, price in enumerate((o, h, lo, c)):
            t = minute * MINUTE_MS + 15_000 * j
            agg.add(Trade("binance", names[i], minute * 4 + j, t, price, v / 4, "buy"))
    stages["aggregator"] = rss_mb()
    gc.collect()
    stages["total"] = rss_mb()
    evaluator = forecaster.evaluator
    keys = streamer.windows.keys()
    return {
        "stages": stages,
        "bars_held": sum(len(streamer.windows.tail(k, cap)) for k in keys),
        "pending_forecasts": evaluator.pending_count() if evaluator else 0,
        "forecasts": forecaster.published_total,
        "model_window": model.spec.window,
        "torch_loaded": "torch" in sys.modules,
    }


# ---- the parent ---------------------------------------------------------------------------


def prepare(workdir: Path, model: Path | None) -> tuple[Path, Path, str]:
    """The bundled real klines as one compact array, and the model file the child loads."""
    import numpy as np

    from streamer.replay.data import bundled_kline_paths, load_source

    series = []
    for path in bundled_kline_paths():
        klines = load_source(path).klines
        series.append([[float(x) for x in (k.open, k.high, k.low, k.close, k.volume)]
                       for k in klines])  # fmt: skip
    length = min(len(s) for s in series)
    data = workdir / "ohlcv.npy"
    np.save(data, np.array([s[:length] for s in series], dtype=np.float64))
    model = model or (DEFAULT_MODEL if DEFAULT_MODEL.is_file() else None)
    if model is not None:
        return data, model, str(model)
    sys.path.insert(0, str(REPO / "tests"))
    from fixtures.models import build_model  # imports onnx: here, never in the child

    path = workdir / "model.onnx"
    path.write_bytes(build_model(window=60, horizon=15))
    return data, path, "tests/fixtures/models.build_model(window=60, horizon=15)"


def measure(n_symbols: int, cap: int, data: Path, model: Path) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", "--symbols", str(n_symbols), "--caps", str(cap)]
    out = subprocess.run(
        [*argv, "--data", str(data), "--model", str(model)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def report(n_symbols: int, cap: int, result: dict[str, Any], detail: bool) -> None:
    stages = result["stages"]
    prefix = f"{n_symbols}_symbols_cap_{cap}"
    figure(f"{prefix}.rss_total", stages["total"], TARGET_MB)
    if not detail:
        return
    order = ["python", "imports", "streamer", "model", "windows", "forecaster", "aggregator"]
    figure(f"{prefix}.rss_after_python", stages["python"])
    for before, after in itertools.pairwise(order):
        figure(f"{prefix}.rss_added_by_{after}", stages[after] - stages[before])
    figure(f"{prefix}.bars_in_windows", result["bars_held"], unit="bars")
    figure(f"{prefix}.pending_forecasts", result["pending_forecasts"], unit="forecasts")
    bytes_per_bar = (stages["windows"] - stages["model"]) * 2**20 / max(1, result["bars_held"])
    figure(f"{prefix}.rss_per_window_bar", bytes_per_bar, unit="bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument(
        "--caps", type=int, nargs="+", default=[240, 1440],
        help="in-memory window caps (TICKCAST_WINDOW_MEMORY_BARS), each measured in detail",
    )  # fmt: skip
    parser.add_argument("--model", type=Path, default=None, help="ONNX file (default: see above)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_bytes = args.model.read_bytes()
        result = asyncio.run(child(args.symbols, args.caps[0], args.data, model_bytes))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data, model, model_name = prepare(Path(tmp), args.model)
        first, *others = args.caps
        result = measure(args.symbols, first, data, model)
        report(args.symbols, first, result, detail=True)
        print(
            f"# model {model_name} (window {result['model_window']}); "
            f"{result['forecasts']} forecasts made; torch loaded: {result['torch_loaded']}",
            file=sys.stderr,
        )
        for cap in others:
            report(args.symbols, cap, measure(args.symbols, cap, data, model), detail=True)


if __name__ == "__main__":
    main()
