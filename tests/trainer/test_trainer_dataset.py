"""Windows never span a gap; splits are disjoint in time; nothing looks ahead."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.trainer_data import MIN, binance_series

from streamer.core.timefmt import parse_iso_ms
from trainer.dataset import (
    Pool,
    target_log_returns,
    time_splits,
    valid_origins,
    windows,
)
from trainer.evaluate import ewma_sigma
from trainer.model import ModelConfig, QuantileLSTM

W, H = 60, 15
BTC = binance_series("BTCUSDT")
GAP_START = parse_iso_ms("2023-03-24T12:40:00Z")  # 80 missing minutes (exchange incident)


def test_windows_never_span_the_real_gap() -> None:
    origins = valid_origins(BTC, W, H)
    span = BTC.open_time_ms[origins + H] - BTC.open_time_ms[origins - W + 1]
    assert np.all(span == (W + H - 1) * MIN)
    before = int(np.searchsorted(BTC.open_time_ms, GAP_START))  # first bar after the gap
    assert BTC.open_time_ms[before] == GAP_START + 80 * MIN
    # the last origin before the gap has its last target on the last bar before it
    last_before = origins[origins < before].max()
    assert last_before == before - 1 - H
    # the first origin after it has a full window of post-gap bars
    assert origins[origins >= before].min() == before + W - 1
    # every other index in range is an origin: 66087 bars, two runs
    runs = (before, len(BTC) - before)
    assert origins.shape[0] == sum(n - W - H + 1 for n in runs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=599), max_size=12, unique=True))
def test_valid_origins_are_exactly_the_gap_free_spans(removed: list[int]) -> None:
    keep = np.setdiff1d(np.arange(600), removed)
    series = BTC.rows(keep + 5000)
    got = set(valid_origins(series, 20, 5).tolist())
    t = series.open_time_ms
    expected = {i for i in range(19, len(t) - 5) if t[i + 5] - t[i - 19] == (20 + 5 - 1) * MIN}
    assert got == expected


def test_splits_are_disjoint_and_separated_by_the_embargo() -> None:
    start = int(BTC.open_time_ms[0])
    end = int(BTC.open_time_ms[-1]) + MIN
    splits = time_splits(
        start, end, parse_iso_ms("2023-04-17"), parse_iso_ms("2023-04-24"), (W + H) * MIN
    )
    used = []
    for split in splits:
        pool = Pool.build([BTC], W, H, split)
        assert len(pool) > 5000
        rows = pool.origins[:, None] + np.arange(-W + 1, H + 1)[None, :]
        times = BTC.open_time_ms[np.unique(rows)]
        assert times.min() >= split.start_ms and times.max() < split.end_ms
        used.append(times)
    for earlier, later in itertools.pairwise(used):
        assert earlier.max() + (W + H) * MIN <= later.min()
        assert np.intersect1d(earlier, later).size == 0


def test_no_look_ahead_in_inputs_targets_model_or_baseline() -> None:
    rows = np.arange(20_000, 21_000)
    series = BTC.rows(rows)
    changed_at = 700
    future = BTC.rows(rows)
    future.bars[changed_at:] *= np.float32(1.05)  # rewrite everything from bar 700 on
    future.close[changed_at:] *= 1.05
    origins = valid_origins(series, W, H)
    early = origins[origins < changed_at]
    assert np.array_equal(windows(series, early, W), windows(future, early, W))
    safe = early[early + H < changed_at]
    assert np.array_equal(target_log_returns(series, safe, H), target_log_returns(future, safe, H))
    # the model (preprocessing included) sees only its window
    model = QuantileLSTM(ModelConfig(hidden=8))
    with torch.no_grad():
        a = model(torch.from_numpy(windows(series, early, W)))
        b = model(torch.from_numpy(windows(future, early, W)))
    assert torch.equal(a, b)
    # the EWMA baseline is causal
    s1, s2 = ewma_sigma(series, W), ewma_sigma(future, W)
    assert np.array_equal(s1[:changed_at], s2[:changed_at], equal_nan=True)
    assert not np.array_equal(s1[changed_at:], s2[changed_at:])
