"""Exported-model inference with onnxruntime on one thread, as the streamer runs it.

Figures: latency of one series (p50 and p99 over 2,000 calls, target 0.3 ms at p50) and of
1,000 series in one call (median of 30 calls, target 150 ms). Inputs are real windows from the
bundled Binance minute data. Usage: .venv/bin/python bench/bench_inference.py [--model PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from benchkit import figure

from trainer.data import read_csv_bars
from trainer.dataset import Series, valid_origins, windows

REPO = Path(__file__).resolve().parent.parent


def emit(name: str, value: float, unit: str, target: float | None) -> None:
    figure(name, round(value, 4), unit, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default" / "model.onnx")
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(
        str(args.model), sess_options=options, providers=["CPUExecutionProvider"]
    )
    inputs = {i.name: i for i in session.get_inputs()}
    window = int(inputs["bars"].shape[1])
    pool, pool_times = [], []  # a contract-2 model also takes each window's last bar time
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT"):
        path = REPO / "models" / "data" / f"{symbol}_1m_20230316_20230501.csv.gz"
        series = Series.from_table("binance", symbol, 60_000, read_csv_bars(path).bars)
        origins = valid_origins(series, window, 1)
        picked = origins[:: max(1, origins.shape[0] // 250)][:250]
        pool.append(windows(series, picked, window))
        pool_times.append(series.open_time_ms[picked] // 1000)
    batch = np.ascontiguousarray(np.concatenate(pool)[:1000], dtype=np.float32)
    bar_times = np.ascontiguousarray(np.concatenate(pool_times)[:1000], dtype=np.int64)

    def feed(rows: slice) -> dict[str, np.ndarray]:
        out = {"bars": batch[rows]}
        if "bar_time" in inputs:
            out["bar_time"] = bar_times[rows]
        return out

    one = feed(slice(0, 1))
    all_rows = feed(slice(0, 1000))
    for _ in range(200):
        session.run(None, one)
    times = []
    for i in range(2000):
        x = feed(slice(i % 1000, i % 1000 + 1))
        start = time.perf_counter()
        session.run(None, x)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    emit("inference_one_series_p50", times[len(times) // 2], "ms", 0.3)
    emit("inference_one_series_p99", times[int(len(times) * 0.99)], "ms", None)

    for _ in range(3):
        session.run(None, all_rows)
    big = []
    for _ in range(30):
        start = time.perf_counter()
        session.run(None, all_rows)
        big.append((time.perf_counter() - start) * 1000)
    emit("inference_1000_series_one_call", statistics.median(big), "ms", 150.0)


if __name__ == "__main__":
    main()
