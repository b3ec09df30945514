"""Contract 2 in the trainer: calendar features computed in the graph from ``bar_time`` (checked
against Python's own calendar), a 240-bar window read as 60 LSTM steps plus HAR summaries,
export parity at batch 1, 7 and 1000 and at the calendar's edges, quantiles that never cross,
and ``tickcast-trainer train`` with ``contract = 2`` in its config, scored by ``evaluate``
beside a contract-1 model. Bars are real Binance minutes (models/data)."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from support.trainer_data import REPO, TRAIN, both_series, exported, training_config
from torch import nn

from streamer.core.contracts import model as contract
from streamer.io.model import load_model
from trainer.cli import main
from trainer.dataset import Pool, Series, Split, parse_iso_ms, valid_origins, windows
from trainer.evaluate import OnnxForecaster, evaluate
from trainer.export import EDGE_TIMES_S, ExportError, check_parity, export_onnx, flat_window
from trainer.model import ModelConfig, QuantileLSTM, calendar, contract_defaults
from trainer.pipeline import load_config
from trainer.train import FitResult, TrainSettings, batch_inputs, evaluate_loss, fit

VAL = Split("val", parse_iso_ms("2023-04-22T04:15"), parse_iso_ms("2023-04-23"))
TEST = Split("test", parse_iso_ms("2023-04-23T04:15"), parse_iso_ms("2023-04-24"))
LEVELS = contract.DEFAULT_LEVELS_V2
CFG = ModelConfig(**contract_defaults({"contract": 2, "hidden": 8}))
SETTINGS = TrainSettings(
    batch_size=256, max_epochs=2, samples_per_epoch=2048, val_samples=1000, lr=5e-3
)


def reference_calendar(t: int) -> tuple[int, int, int]:
    """Minute of hour, hour of day, day of week (Monday 0) from Python's datetime, UTC."""
    d = datetime.fromtimestamp(t, UTC)
    return d.minute, d.hour, d.weekday()


def edge_times() -> list[int]:
    """UTC edges: minute 0 and 59, hour 0 and 23, Sunday into Monday, a leap day, year ends,
    the epoch, 2038 (beyond int32 seconds), and a few seconds before each."""
    days = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2023, 4, 23, tzinfo=UTC),  # a Sunday
        datetime(2023, 4, 24, tzinfo=UTC),  # a Monday
        datetime(2024, 2, 29, tzinfo=UTC),
        datetime(2024, 12, 31, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
        datetime(2038, 1, 19, tzinfo=UTC),
    ]
    times = []
    for day in days:
        base = int(day.timestamp())
        for hour in (0, 1, 12, 23):
            for minute in (0, 1, 14, 15, 30, 45, 59):
                t = base + hour * 3600 + minute * 60
                times += [t, t + 59, t - 1]
    return [t for t in times if t >= 0]


@pytest.fixture(scope="module")
def times() -> np.ndarray:
    """The edges, plus 20,000 random seconds from 1970 to 2100."""
    rng = np.random.default_rng(11)
    random = rng.integers(0, 4_102_444_800, 20_000, dtype=np.int64)
    return np.concatenate([np.asarray(edge_times(), np.int64), random, np.asarray(EDGE_TIMES_S)])


def one_hot(reference: list[tuple[int, int, int]]) -> np.ndarray:
    out = np.zeros((len(reference), 91), np.float32)
    for row, (minute, hour, day) in enumerate(reference):
        out[row, [minute, 60 + hour, 84 + day]] = 1.0
    return out


def test_calendar_fields_match_pythons_calendar(times: np.ndarray) -> None:
    minute, hour, day = calendar(torch.from_numpy(times))
    got = list(zip(minute.tolist(), hour.tolist(), day.tolist(), strict=True))
    assert got == [reference_calendar(int(t)) for t in times]
    assert reference_calendar(1_682_294_340) == (59, 23, 6)  # 2023-04-23 23:59, Sunday
    assert reference_calendar(1_682_294_400) == (0, 0, 0)  # 2023-04-24 00:00, Monday


class TimeFeatures(nn.Module):
    """The model's own ``time_features``, alone, so its exported graph can be read out."""

    def __init__(self, model: QuantileLSTM) -> None:
        super().__init__()
        self.model = model

    def forward(self, bar_time: torch.Tensor) -> torch.Tensor:
        return self.model.time_features(bar_time)


def test_graph_side_time_features_equal_the_reference_in_torch_and_onnxruntime(
    times: np.ndarray,
) -> None:
    model = QuantileLSTM(CFG)
    expected = one_hot([reference_calendar(int(t)) for t in times])
    np.testing.assert_array_equal(model.time_features(torch.from_numpy(times)).numpy(), expected)
    buffer = io.BytesIO()
    torch.onnx.export(
        TimeFeatures(model),
        (torch.from_numpy(times[:2]),),
        buffer,  # type: ignore[arg-type]
        input_names=["bar_time"],
        output_names=["features"],
        dynamic_axes={"bar_time": {0: "batch"}, "features": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"bar_time": times})
    np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def series() -> list[Series]:
    return both_series(TRAIN.start_ms, TEST.end_ms)


@pytest.fixture(scope="module")
def trained(series: list[Series]) -> FitResult:
    w, h = CFG.window, CFG.horizon
    pools = (Pool.build(series, w, h, TRAIN), Pool.build(series, w, h, VAL))
    return fit(CFG, SETTINGS, *pools, log=lambda _: None)


@pytest.fixture(scope="module")
def real(series: list[Series]) -> tuple[np.ndarray, np.ndarray]:
    """1,000 real 240-bar windows of the test day (BTC, then ETH) and the open time of each
    one's last bar."""
    xs, ts = [], []
    for s in series:
        origins = valid_origins(s, CFG.window, CFG.horizon, TEST.start_ms, TEST.end_ms)
        xs.append(windows(s, origins, CFG.window))
        ts.append(s.open_time_ms[origins] // 1000)
    return np.concatenate(xs)[:1000], np.concatenate(ts)[:1000]


@pytest.fixture(scope="module")
def artifact(trained: FitResult) -> bytes:
    return exported(trained.model, {"trained_at": "2023-04-24T00:00:00Z"})


def test_the_config_defaults_of_contract_2() -> None:
    assert (CFG.window, CFG.steps, CFG.quantiles) == (240, 60, LEVELS)
    assert CFG.har_windows == (5, 15, 60, 240)
    assert contract_defaults({"contract": 2, "window": 120})["har_windows"] == (5, 15, 60)
    assert contract_defaults({"window": 60}) == {"window": 60}  # contract 1 untouched
    assert (
        "contract" not in ModelConfig().to_dict()
    )  # contract-1 runs describe themselves as before
    assert CFG.to_dict()["har_windows"] == [5, 15, 60, 240]
    bad = [
        ({"lstm_steps": 30}, "need model.contract = 2"),
        ({"contract": 3}, "model.contract=3"),
        ({"contract": 2, "window": 480, "lstm_steps": 60}, "at most 240"),
        ({"contract": 2, "window": 240, "lstm_steps": 300}, "model.lstm_steps=300"),
        ({"contract": 2, "window": 60, "har_windows": (5, 120)}, "model.har_windows=[5, 120]"),
        ({"contract": 2, "window": 60, "har_windows": (15, 5)}, "increasing spans"),
    ]
    for fields, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            ModelConfig(**fields)  # type: ignore[arg-type]


def wild(model: QuantileLSTM, seed: int = 5) -> QuantileLSTM:
    """``model`` with a random head of large weights, so every input moves the output."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in (model.hidden_layer, model.out_layer):
            layer.weight.normal_(0.0, 3.0)
            layer.bias.normal_(0.0, 3.0)
    return model


def test_the_output_reads_the_clock_and_the_bars_before_the_lstm_steps(
    real: tuple[np.ndarray, np.ndarray],
) -> None:
    x, t = (torch.from_numpy(a[:64]) for a in real)
    model = wild(QuantileLSTM(CFG))
    with torch.no_grad():
        base = model(x, t)
        for shift in (60, 3600, 86_400):  # a minute, an hour, a day later: other features
            assert (model(x, t + shift) != base).any(dim=(1, 2)).all()
        assert torch.equal(model(x, t + 7 * 86_400), base)  # a week later: the same calendar
        older = x.clone()
        older[:, :120, :4] *= 1.01  # bars older than the LSTM's 60 steps, 1 % higher
        assert (model(older, t) != base).any(dim=(1, 2)).all()  # the HAR summaries read them
        untrained = QuantileLSTM(CFG)  # a zero head: the Gaussian band of the LSTM's bars
        tail = replace(CFG, window=60, har_windows=(5, 15, 60))
        ones = QuantileLSTM(tail)
        np.testing.assert_allclose(untrained(x, t), ones(x[:, -60:], t), rtol=1e-6)
    with pytest.raises(ValueError, match="needs bar_time"):
        model(x[:2])


def test_training_lowers_the_loss_through_the_contract_2_graph(series: list[Series]) -> None:
    """Fitting a small fixed set of real windows reduces its pinball loss: gradients flow from
    the prices back through the LSTM, the HAR summaries and the calendar features."""
    pool = Pool.build(series, CFG.window, CFG.horizon, TRAIN)
    small = replace(pool, origins=pool.origins[::16][:512], series_id=pool.series_id[::16][:512])
    rows = np.arange(len(small))
    before = evaluate_loss(QuantileLSTM(CFG), small, rows)
    settings = TrainSettings(
        batch_size=128, max_epochs=12, samples_per_epoch=512, val_samples=0, lr=1e-2, patience=12
    )
    result = fit(CFG, settings, small, small, log=lambda _: None)
    assert result.best_val_loss < 0.97 * before
    weights = result.model.hidden_layer.weight.detach()
    calendar_columns = weights[:, -91:]  # the one-hot calendar inputs were learned from
    assert calendar_columns.abs().sum() > 0
    assert not torch.equal(calendar_columns, QuantileLSTM(CFG).hidden_layer.weight[:, -91:])


def test_a_short_contract_2_run_keeps_the_best_validation_state(trained: FitResult) -> None:
    history = trained.history
    assert all(np.isfinite(row["val_loss"]) for row in history)
    assert trained.best_val_loss == min(row["val_loss"] for row in history)


def test_onnxruntime_matches_torch_at_batch_1_7_1000_and_the_calendar_edges(
    trained: FitResult, artifact: bytes, real: tuple[np.ndarray, np.ndarray]
) -> None:
    x, t = real
    report = check_parity(trained.model, artifact, x, bar_time_s=t)
    assert set(report["batches"]) == {"1", "7", "1000", "calendar_edges", "flat_zero_volume"}
    for figures in report["batches"].values():
        assert figures["max_rel_err"] <= 1e-4
    with pytest.raises(ExportError, match="needs the bar time of every real window"):
        check_parity(trained.model, artifact, x)
    other = QuantileLSTM(CFG)  # the check can fail: a model that no longer matches its export
    other.load_state_dict(trained.model.state_dict())
    with torch.no_grad():
        other.out_layer.bias.add_(0.5)
    with pytest.raises(ExportError, match="differs from torch"):
        check_parity(other, artifact, x, bar_time_s=t)


def random_windows(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random-walk bars at wildly different price levels and volatilities, volume often 0."""
    level = np.exp(rng.uniform(np.log(1e-4), np.log(1e5), (n, 1)))
    vol = np.exp(rng.uniform(np.log(1e-5), np.log(5e-2), (n, 1)))
    close = level * np.exp(np.cumsum(rng.normal(0, 1, (n, CFG.window)) * vol, axis=1))
    open_ = np.concatenate([close[:, :1], close[:, :-1]], axis=1)
    spread = np.abs(rng.normal(0, 1, (n, CFG.window))) * vol
    high = np.maximum(open_, close) * np.exp(spread)
    low = np.minimum(open_, close) * np.exp(-spread)
    volume = np.where(rng.random((n, CFG.window)) < 0.3, 0.0, rng.exponential(5.0, (n, CFG.window)))
    return np.stack([open_, high, low, close, volume], axis=-1).astype(np.float32)


def test_quantiles_never_cross_on_random_inputs_in_torch_and_onnxruntime() -> None:
    rng = np.random.default_rng(5)
    model = wild(QuantileLSTM(CFG))  # a wild head, to stress the non-crossing construction
    session = ort.InferenceSession(export_onnx(model), providers=["CPUExecutionProvider"])
    x = np.concatenate([random_windows(2000, rng), flat_window(CFG.window, 0.00012)])
    t = rng.integers(0, 4_102_444_800, x.shape[0], dtype=np.int64)
    with torch.no_grad():
        expected = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    (got,) = session.run(None, {"bars": x, "bar_time": t})
    for out in (expected, got):
        assert out.shape == (x.shape[0], CFG.horizon, len(LEVELS))
        assert not contract.bad_output_rows(out).any()  # finite, and non-decreasing in level
        assert (np.diff(out, axis=2) >= 0).all()


def test_the_artifact_meets_contract_2_and_the_streamer_serves_it(
    artifact: bytes, real: tuple[np.ndarray, np.ndarray]
) -> None:
    model = load_model(artifact, smoke_windows=lambda w: real[0][:8])  # with the smoke check
    spec = model.spec
    assert (spec.contract, spec.window, spec.horizon, spec.quantiles) == (2, 240, 15, LEVELS)
    inputs = {i.name: (i.type, i.shape) for i in model.session.get_inputs()}
    assert inputs["bar_time"][0] == "tensor(int64)" and isinstance(inputs["bar_time"][1][0], str)
    x, t = real
    out = model.run(x, t)
    scored = OnnxForecaster(artifact).predict(x, t)  # tickcast-trainer evaluate's path
    np.testing.assert_array_equal(out, scored)
    assert not contract.bad_output_rows(out).any()


def test_evaluate_scores_contract_1_and_2_side_by_side(
    artifact: bytes, series: list[Series]
) -> None:
    default = OnnxForecaster.from_path(REPO / "models" / "default" / "model.onnx")
    assert default.spec.contract == 1
    models = {"model": OnnxForecaster(artifact), "current": default}
    report, _ = evaluate(models, series, TEST, TRAIN)  # type: ignore[arg-type]
    btc = report["series"]["binance:BTCUSDT"]
    origins = valid_origins(series[0], 240, 15, TEST.start_ms, TEST.end_ms)
    assert btc["origins"] == origins.shape[0]  # both scored on the 240-bar model's origins
    for name in ("model", "current"):
        rows = btc["contenders"][name]["per_h"]
        assert len(rows) == 15 and all(r["pinball_bps"] > 0 for r in rows)
    assert len(btc["contenders"]["model"]["per_h"][0]["calibration"]) == 7
    assert len(btc["contenders"]["current"]["per_h"][0]["calibration"]) == 3


CONTRACT_2_CONFIG = training_config("contract = 2\nhidden = 8", "max_epochs = 1\nval_samples = 500")


def test_tickcast_trainer_train_writes_a_contract_2_model_from_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "train.toml"
    config.write_text(CONTRACT_2_CONFIG)
    loaded = load_config(config).model
    assert (loaded.contract, loaded.window, loaded.steps, loaded.quantiles) == (2, 240, 60, LEVELS)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as done:
        main(["train", "--config", str(config), "--out", str(out)])
    assert done.value.code in (0, None)
    data = (out / "model.onnx").read_bytes()
    model = load_model(data)  # the streamer's checks, flat fallback smoke windows
    assert (model.spec.contract, model.spec.window, model.spec.quantiles) == (2, 240, LEVELS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["contract"], manifest["window"], manifest["quantiles"]) == (
        2, 240, list(LEVELS),
    )  # fmt: skip
    assert manifest["trained"]["model"]["contract"] == 2
    report = json.loads((out / "report.json").read_text())
    assert set(report["parity"]["batches"]) >= {"1", "7", "1000", "calendar_edges"}
    capsys.readouterr()
    evaluated = tmp_path / "eval"
    args = ["evaluate", "--model", str(out / "model.onnx"), "--model"]
    args += [str(REPO / "models" / "default" / "model.onnx"), "--store", str(tmp_path / "history")]
    args += ["--symbols", "binance:BTCUSDT", "--out", str(evaluated)]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code in (0, None)
    scored = json.loads((evaluated / "report.json").read_text())
    contenders = scored["series"]["binance:BTCUSDT"]["contenders"]
    assert {"model", "model2", "ewma_band"} <= set(contenders)


def test_training_feeds_each_origin_its_own_bar_time(series: list[Series]) -> None:
    pool = Pool.build(series, 240, 15, TRAIN)
    rows = np.array([0, 1, 500, len(pool) - 1])
    expected = []
    for row in rows.tolist():  # the open time of each origin's last bar, found in its series
        s = series[int(pool.series_id[row])]
        offset = sum(len(x) for x in series[: int(pool.series_id[row])])
        expected.append(int(s.open_time_ms[int(pool.origins[row]) - offset]) // 1000)
    assert pool.bar_time_s(rows).tolist() == expected
    inputs, target = batch_inputs(CFG, pool, rows)
    assert [tuple(i.shape) for i in inputs] == [(4, 240, 5), (4,)]
    assert inputs[1].dtype == torch.int64 and inputs[1].tolist() == expected
    x, y = pool.batch(rows, 240, 15)
    assert torch.equal(inputs[0], torch.from_numpy(x))
    assert torch.equal(target, torch.from_numpy((y * 1e4).astype(np.float32)))  # in bp
    one, _ = batch_inputs(ModelConfig(window=240), pool, rows)
    assert len(one) == 1  # contract 1: the bars alone
