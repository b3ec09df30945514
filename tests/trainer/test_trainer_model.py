"""A short real training run, export parity at batch 1, 7 and 1000, and the evaluation report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from support.trainer_data import TRAIN, both_series, exported

from streamer.core.contracts import model as contract
from trainer.dataset import Pool, Series, Split, parse_iso_ms, valid_origins, windows
from trainer.evaluate import (
    OnnxForecaster,
    evaluate,
    markdown_table,
    metrics_summary,
    plot_all,
    write_report,
)
from trainer.export import ExportError, check_parity, flat_window
from trainer.model import ModelConfig, QuantileLSTM
from trainer.train import FitResult, TrainSettings, evaluate_loss, fit

VAL = Split("val", parse_iso_ms("2023-04-22T01:15"), parse_iso_ms("2023-04-23"))
TEST = Split("test", parse_iso_ms("2023-04-23T01:15"), parse_iso_ms("2023-04-24"))
TINY = ModelConfig(hidden=8)
SETTINGS = TrainSettings(
    batch_size=256, max_epochs=4, samples_per_epoch=2048, val_samples=2000, lr=5e-3, patience=2
)


@pytest.fixture(scope="module")
def series() -> list[Series]:
    return both_series(TRAIN.start_ms, TEST.end_ms)


@pytest.fixture(scope="module")
def trained(series: list[Series]) -> FitResult:
    return fit(
        TINY,
        SETTINGS,
        Pool.build(series, 60, 15, TRAIN),
        Pool.build(series, 60, 15, VAL),
        log=lambda _: None,
    )


@pytest.fixture(scope="module")
def real_windows(series: list[Series]) -> np.ndarray:
    origins = valid_origins(series[0], 60, 15, TEST.start_ms, TEST.end_ms)
    return windows(series[0], origins[:1000], 60)


@pytest.fixture(scope="module")
def artifact(trained: FitResult) -> bytes:
    return exported(trained.model, {"trained_at": "2023-04-24T00:00:00Z"})


def test_short_training_run_keeps_the_best_validation_state(
    trained: FitResult, series: list[Series]
) -> None:
    history = trained.history
    assert [row["epoch"] for row in history] == list(range(len(history)))
    assert all(np.isfinite(row["val_loss"]) for row in history)
    assert trained.best_val_loss == min(row["val_loss"] for row in history)
    assert len(history) - 1 - trained.best_epoch <= SETTINGS.patience
    # the returned weights are those of the best validation epoch
    val = Pool.build(series, 60, 15, VAL)
    rng = np.random.default_rng(SETTINGS.seed)
    rows = np.sort(rng.choice(len(val), SETTINGS.val_samples, replace=False))
    assert evaluate_loss(trained.model, val, rows) == pytest.approx(trained.best_val_loss, rel=1e-6)


def test_training_lowers_the_loss_through_the_in_graph_preprocessing(
    series: list[Series],
) -> None:
    """Fitting a small fixed set of real windows must reduce its pinball loss: gradients flow
    from the price outputs back through the LSTM and the feature graph."""
    pool = Pool.build(series, 60, 15, TRAIN)
    small = replace(pool, origins=pool.origins[::16][:512], series_id=pool.series_id[::16][:512])
    rows = np.arange(len(small))
    before = evaluate_loss(QuantileLSTM(TINY), small, rows)  # the seed-7 initial model
    settings = TrainSettings(
        batch_size=128,
        max_epochs=12,
        samples_per_epoch=512,
        val_samples=0,
        lr=1e-2,
        patience=12,
    )
    result = fit(TINY, settings, small, small, log=lambda _: None)
    assert result.best_val_loss < 0.97 * before


def test_training_is_reproducible(series: list[Series]) -> None:
    pools = (Pool.build(series, 60, 15, TRAIN), Pool.build(series, 60, 15, VAL))
    short = TrainSettings(batch_size=128, max_epochs=1, samples_per_epoch=640, val_samples=500)
    a = fit(TINY, short, *pools, log=lambda _: None).model.state_dict()
    b = fit(TINY, short, *pools, log=lambda _: None).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["out_layer.weight"], QuantileLSTM(TINY).out_layer.weight)


def test_outputs_are_finite_monotone_prices(trained: FitResult, real_windows: np.ndarray) -> None:
    model = QuantileLSTM(TINY)
    torch.manual_seed(3)
    with torch.no_grad():  # a wild head, to stress the non-crossing construction
        model.out_layer.weight.normal_(0.0, 3.0)
        model.out_layer.bias.normal_(0.0, 3.0)
        for m in (model, trained.model):
            out = m(torch.from_numpy(real_windows)).numpy()
            assert not contract.bad_output_rows(out).any()
            last = real_windows[:, -1, 3][:, None, None]
            assert np.all(np.abs(out / last - 1) < 0.2)  # prices near the last close
            flat = m(torch.from_numpy(flat_window(60, 61234.5))).numpy()
            assert np.isfinite(flat).all()
            assert np.allclose(flat, 61234.5, rtol=1e-3)  # within 10 bp: sigma has a floor


def test_export_is_one_self_contained_contract_file(artifact: bytes) -> None:
    proto = onnx.load_model_from_string(artifact)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert "LSTM" in {n.op_type for n in proto.graph.node}
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    spec = contract.parse_metadata({p.key: p.value for p in proto.metadata_props})
    assert (spec.window, spec.horizon, spec.quantiles) == (60, 15, (0.1, 0.5, 0.9))
    assert spec.trained_at == "2023-04-24T00:00:00Z"
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    assert (inp.name, out.name) == ("bars", "quantiles")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [60, 5]
    contract.check_io_shapes(inp.name, list(inp.shape), out.name, list(out.shape), spec)


def test_onnxruntime_matches_torch_at_batch_1_7_1000(
    trained: FitResult, artifact: bytes, real_windows: np.ndarray
) -> None:
    report = check_parity(trained.model, artifact, real_windows)
    assert set(report["batches"]) == {"1", "7", "1000", "flat_zero_volume"}
    for figures in report["batches"].values():
        assert figures["max_rel_err"] <= 1e-4
    # the check can fail: a model that no longer matches its export is refused
    other = QuantileLSTM(TINY)
    other.load_state_dict(trained.model.state_dict())
    with torch.no_grad():
        other.out_layer.bias.add_(0.5)
    with pytest.raises(ExportError, match="differs from torch"):
        check_parity(other, artifact, real_windows)


def test_evaluation_report_on_real_held_out_minutes(
    artifact: bytes, series: list[Series], tmp_path: Path
) -> None:
    model = OnnxForecaster(artifact)
    report, data = evaluate({"model": model}, series, TEST, TRAIN)
    btc = report["series"]["binance:BTCUSDT"]
    s = series[0]
    origins = valid_origins(s, 60, 15, TEST.start_ms, TEST.end_ms)
    assert btc["origins"] == origins.shape[0]
    persistence = btc["contenders"]["persistence"]["per_h"]
    for h in (1, 15):  # recomputed independently from the bars
        expected = np.mean(np.abs(s.close[origins + h] - s.close[origins]))
        assert persistence[h - 1]["mae_price"] == pytest.approx(expected, rel=1e-12)
        assert persistence[h - 1]["skill"] == 0.0
    ewma = btc["contenders"]["ewma_band"]["per_h"]
    assert all(row["pinball_ratio_ewma"] == pytest.approx(1.0) for row in ewma)
    m = btc["contenders"]["model"]["per_h"]
    assert len(m) == 15 and [r["h"] for r in m] == list(range(1, 16))
    for row in m:
        assert 0.0 <= row["coverage"] <= 1.0
        assert row["width_bps"] > 0 and row["pinball_bps"] > 0
        assert 0.0 <= row["dir_share"] <= 1.0
        assert row["calibration"] == sorted(row["calibration"])
    x = windows(s, origins, 60)
    pred = model.predict(x)
    expected_cov = np.mean(
        (s.close[origins + 5] >= pred[:, 4, 0]) & (s.close[origins + 5] <= pred[:, 4, 2])
    )
    assert m[4]["coverage"] == pytest.approx(expected_cov)
    assert {t["h"] for t in report["targets"]} == {1, 5, 15}
    table = markdown_table(report)
    assert "| binance:BTCUSDT | 1 |" in table and "static_quantiles" in table
    summary = metrics_summary(report)
    json.dumps(summary)  # travels as JSON metadata
    assert summary["per_series"]["binance:ETHUSDT"]["h15"]["pinball_bps"] == pytest.approx(
        report["series"]["binance:ETHUSDT"]["contenders"]["model"]["per_h"][14]["pinball_bps"]
    )
    files = write_report(report, tmp_path) + plot_all(report, data, tmp_path, hours=2.0)
    names = {f.name for f in files}
    assert {"report.json", "report.md", "forecast.png", "calibration.png"} <= names
    assert all(f.stat().st_size > 1000 for f in files)
    assert json.loads((tmp_path / "report.json").read_text())["horizon"] == 15
