"""The tickcast-trainer commands end to end: import, train through the gate, list, promote,
rollback, evaluate, daily data, and the schedule loop."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from support.trainer_data import FIXTURES, REPO, minutes_file, training_config

from trainer.cli import build_parser, main
from trainer.pipeline import ConfigError, load_config, run_training
from trainer.registry import DirectoryRegistry
from trainer.schedule import run_every


def tiny_minutes(seed: int) -> str:
    """A run of two epochs on a small model, fast enough for a test."""
    return training_config("hidden = 8", f"max_epochs = 2\nval_samples = 1000\nseed = {seed}")


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


def _config(tmp_path: Path, seed: int = 7, extra: str = "") -> Path:
    path = tmp_path / f"train-{seed}.toml"
    path.write_text(tiny_minutes(seed) + extra)
    return path


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [
        "import",
        "history",
        "backfill",
        "train",
        "schedule",
        "evaluate",
        "promote",
        "rollback",
        "list",
    ]
    for command in commands:
        assert _run([command, "--help"]) == 0
        assert "usage: tickcast-trainer " + command in capsys.readouterr().out
    assert build_parser().parse_args(["list", "--registry", "x"]).registry == "x"


def test_import_command_reports_bad_rows_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = FIXTURES / "binance_dump_BTCUSDT_1m_2023-04-24_ms.csv"
    lines = source.read_text().splitlines()
    lines[4] = lines[4].replace(",", ",-", 5).replace(",-", ",", 4)  # line 5: negative volume
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    store = tmp_path / "store"
    args = ["import", "--store", str(store), "--exchange", "binance", "--symbol", "BTCUSDT"]
    assert _run([*args, str(source)]) == 0
    assert _run([*args, "--strict", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "layout binance, interval 1m, 180 good bars, 180 new" in out
    assert f"{bad}:5: negative_volume" in out
    assert _run(["history", "--store", str(store)]) == 0
    assert "binance:BTCUSDT 1m: 180 bars 2023-04-24T00:00:00Z .. 2023-04-24T02:59:00Z, 0 gaps" in (
        capsys.readouterr().out
    )


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = _config(tmp_path, extra="\n[model.extra]\n")
    with pytest.raises(ConfigError, match=r"\[model\] unknown key\(s\): extra"):
        load_config(path)
    path.write_text(tiny_minutes(7).replace("hidden = 8", "hiden = 8"))
    with pytest.raises(ConfigError, match="hiden"):
        load_config(path)


def test_train_publishes_through_the_gate_then_operators_promote_and_roll_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry_dir = tmp_path / "registry"
    out = tmp_path / "out"
    first = ["train", "--config", str(_config(tmp_path, 7)), "--registry", str(registry_dir)]
    assert _run([*first, "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "model.onnx",
        "manifest.json",
        "report.json",
        "report.md",
        "forecast.png",
        "calibration.png",
        "loss.png",
    }
    registry = DirectoryRegistry(registry_dir)
    (v1,) = [m["version"] for m in registry.list_versions()]
    data, manifest = registry.fetch(v1)
    assert data == (out / "model.onnx").read_bytes()
    report = json.loads((out / "report.json").read_text())
    figures = manifest["gate"]["figures"]
    expected = (
        figures["candidate_pinball_bps"]
        < min(figures["ewma_pinball_bps"], figures["har_pinball_bps"])
        and figures["candidate_mae_bps"] <= figures["persistence_mae_bps"]
    )
    pooled = report["all"]["contenders"]
    assert figures["har_pinball_bps"] == pytest.approx(
        sum(r["pinball_bps"] for r in pooled["har_band"]["per_h"]) / figures["horizons"]
    )
    assert (manifest["gate"]["decision"] == "promote") == expected
    assert manifest["status"] == ("promoted" if expected else "candidate")
    assert registry.current_version() == (v1 if expected else None)
    assert report["gate"] == manifest["gate"]
    assert manifest["trained"]["symbols"] == ["BTCUSDT", "ETHUSDT"]
    assert manifest["trained"]["splits"]["test"]["start"] == "2023-04-23T01:15:00Z"
    assert manifest["code_version"].startswith("tickcast")
    assert manifest["metrics"]["parity"]["1000"]["max_rel_err"] <= 1e-4

    registry.promote(v1, actor="test")  # whatever the gate said, make it current
    second = ["train", "--config", str(_config(tmp_path, 8)), "--registry", str(registry_dir)]
    assert _run(second) == 0
    versions = [m["version"] for m in registry.list_versions()]
    assert len(versions) == 2
    v2 = versions[0]
    m2 = registry.manifest(v2)
    assert m2["parent_version"] == v1
    cur = m2["gate"]["figures"]["current_pinball_bps"]
    assert cur is not None  # the current model was scored on the same window
    assert (m2["gate"]["decision"] == "promote") == (
        m2["gate"]["figures"]["candidate_pinball_bps"]
        < min(
            cur, m2["gate"]["figures"]["ewma_pinball_bps"], m2["gate"]["figures"]["har_pinball_bps"]
        )
        and m2["gate"]["figures"]["candidate_mae_bps"]
        <= m2["gate"]["figures"]["persistence_mae_bps"]
    )
    capsys.readouterr()
    assert _run(["promote", v2, "--registry", str(registry_dir)]) == 0
    assert _run(["rollback", "--registry", str(registry_dir)]) == 0
    assert f"current is now {v1}" in capsys.readouterr().out
    assert _run(["list", "--registry", str(registry_dir)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith(f"  {v2}  rolled_back")
    assert listing[1].startswith(f"* {v1}  promoted")

    # evaluate scores any contract-1 file on any bars: here both versions on one CSV day
    assert (
        _run(
            [
                "evaluate",
                "--model",
                str(out / "model.onnx"),
                "--version",
                v2,
                "--registry",
                str(registry_dir),
                "--csv",
                str(FIXTURES / "binance_dump_BTCUSDT_1m_2023-04-24_ms.csv"),
                "--symbols",
                "binance:BTCUSDT",
                "--start",
                "2023-04-24T01:00:00Z",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "| binance:BTCUSDT | 15 | 46 |" in table  # 180 bars - 60 before 01:00 ... - 15 ahead
    assert f"| {v2} |" in table
    # both models' pinball ratios to both bands; an hour is too short for the clock factors
    assert "| pinball EWMA (bp) | ratio to EWMA | pinball HAR (bp) | ratio to HAR |" in table
    assert f"| binance:BTCUSDT | 15 | {v2} |" in table
    assert "HAR band (plain: no clock seasonality on this fit range)" in table
    har_row = next(line for line in table.splitlines() if line.startswith("| har_band |"))
    assert har_row.endswith("| 1.000 |") and "inf" not in har_row


def test_daily_yahoo_data_trains_with_the_same_code(tmp_path: Path) -> None:
    text = f"""
[data]
store = "history"
symbols = ["yahoo:BTC-USD"]
interval = "1d"

[[data.import]]
exchange = "yahoo"
symbol = "BTC-USD"
path = "{FIXTURES}/yahoo_BTC-USD_1d_2019_2021.csv"

[split]
train_fraction = 0.6
val_fraction = 0.2

[model]
window = 30
horizon = 5
hidden = 8

[train]
batch_size = 64
max_epochs = 2
samples_per_epoch = 256
"""
    path = tmp_path / "daily.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.data.interval_ms == 86_400_000
    registry = DirectoryRegistry(tmp_path / "registry")
    outcome = run_training(cfg, tmp_path / "out", registry=registry, log=lambda _: None)
    assert outcome.manifest["trained"]["interval"] == "1d"
    assert outcome.report["horizon"] == 5
    assert outcome.report["series"]["yahoo:BTC-USD"]["origins"] > 100
    assert not outcome.published  # contract 1 serves 1-minute models only
    assert registry.list_versions() == []
    assert (tmp_path / "out" / "model.onnx").exists()


def test_schedule_runs_until_stopped_and_survives_a_failed_run() -> None:
    stop = threading.Event()
    calls: list[int] = []

    def job() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("exchange down")
        if len(calls) == 3:
            stop.set()

    runs, failures = run_every(0.01, job, stop, log=lambda _: None)
    assert (runs, failures, calls) == (3, 1, [0, 1, 2])
    assert run_every(3600, lambda: None, threading.Event(), max_runs=1, log=lambda _: None) == (
        1,
        0,
    )


def test_rolling_splits_for_scheduled_retraining(tmp_path: Path) -> None:
    from trainer.data import read_csv_bars
    from trainer.dataset import Series
    from trainer.pipeline import make_splits

    cfg = load_config(REPO / "models" / "retrain.toml", store_override=tmp_path)
    bars = read_csv_bars(minutes_file("BTCUSDT")).bars
    series = [Series.from_table("binance", "BTCUSDT", 60_000, bars)]
    train, val, test = make_splits(series, cfg)
    day, embargo = 86_400_000, (60 + 15) * 60_000
    assert test.end_ms == int(bars.open_time_ms[-1]) + 60_000
    assert (test.end_ms - test.start_ms, val.end_ms - val.start_ms) == (2 * day, 3 * day)
    assert train.end_ms - train.start_ms == 21 * day
    assert (val.start_ms - train.end_ms, test.start_ms - val.end_ms) == (embargo, embargo)
