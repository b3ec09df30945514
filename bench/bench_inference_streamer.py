"""Streamer inference path: bars -> features.window_array -> ModelServer.predict (worker thread).

Series are windows cut from real Binance BTCUSDT/ETHUSDT 1-minute bars (tests/fixtures/bars),
cycled to 1,000 series. The default model is the torch-free fixture model of
tests/fixtures/models.py, so ``predict`` measures the serving overhead (thread hop, session
call, copies); pass ``--model PATH`` to time a real artifact such as the trainer's default model.

    .venv/bin/python bench/bench_inference_streamer.py [--model PATH] [--repeat N]

Prints one JSON line per figure (median ms per call). The targets are the trainer issue's
inference budget (1 series <= 0.3 ms, 1,000 series <= 150 ms with one thread).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from benchkit import figure

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the fixture model builder and the real bars

from fixtures.features import window_array  # noqa: E402
from fixtures.models import build_model, real_bars  # noqa: E402

from streamer.core.types import Bar  # noqa: E402
from streamer.io.model import ModelServer, load_model  # noqa: E402

NAME = "inference_streamer"


def make_series(n: int, window: int) -> list[list[Bar]]:
    sources = [real_bars("BTCUSDT"), real_bars("ETHUSDT")]
    if window > len(sources[0]):
        raise SystemExit(f"the bundled real bars hold {len(sources[0])} minutes < window {window}")
    cuts = [
        bars[offset : offset + window]
        for bars in sources
        for offset in range(len(bars) - window + 1)
    ]
    return [cuts[i % len(cuts)] for i in range(n)]


def emit(name: str, value: float, target: float | None) -> None:
    figure(f"{NAME}.{name}", round(value, 4), "ms", target)


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000.0


async def timed(repeat: int, call: Callable[[], object]) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        if asyncio.iscoroutine(result):
            await result
        samples.append(time.perf_counter() - start)
    return samples


async def bench_size(server: ModelServer, n: int, window: int, repeat: int, target: float) -> None:
    series = make_series(n, window)
    batch = window_array(series, window)
    bar_time_s = np.array([s[-1].open_time_ms // 1000 for s in series], np.int64)  # contract 2
    await server.predict(batch, bar_time_s=bar_time_s)  # warm-up
    features = await timed(repeat, lambda: window_array(series, window))
    predict = await timed(repeat, lambda: server.predict(batch, bar_time_s=bar_time_s))
    both = await timed(
        repeat, lambda: server.predict(window_array(series, window), bar_time_s=bar_time_s)
    )
    emit(f"window_array_{n}_series", median_ms(features), None)
    emit(f"predict_{n}_series", median_ms(predict), target)
    emit(f"features_and_predict_{n}_series", median_ms(both), None)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="ONNX artifact (default: the fixture model)")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    data = args.model.read_bytes() if args.model else build_model()
    model = load_model(data)
    window = model.spec.window
    server = ModelServer()
    server.swap(model)
    try:
        for n, target in ((1, 0.3), (1000, 150.0)):
            await bench_size(server, n, window, args.repeat, target)
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
