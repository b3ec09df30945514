"""Models with different quantile levels, scored side by side: a 7-level model (0.05..0.95, as
contract 2 trains by default) against a 3-level one (0.1/0.5/0.9, the shipped default's).

Both fixtures are untrained QuantileLSTMs exported to ONNX: an untrained model is a Gaussian
band on its window's volatility, so the two forecast exactly the same prices at the levels they
share. Whatever the report or the gate says differs between them can only come from how levels
are handled. Data: models/data (real Binance minutes), fit 2023-03-17 .. 04-16, scored on
2023-04-24.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support.trainer_data import EVAL, FIT, both_series, exported

from trainer.dataset import Series, future_closes, valid_origins
from trainer.evaluate import (
    EvalData,
    OnnxForecaster,
    evaluate,
    markdown_table,
    plot_all,
    quality_targets,
)
from trainer.model import ModelConfig, QuantileLSTM
from trainer.registry import gate, gate_figures

SEVEN = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
THREE = (0.1, 0.5, 0.9)


def _untrained(levels: tuple[float, ...]) -> OnnxForecaster:
    torch.manual_seed(0)
    return OnnxForecaster(exported(QuantileLSTM(ModelConfig(quantiles=levels, hidden=8)), {}))


@pytest.fixture(scope="module")
def series() -> list[Series]:
    return both_series(FIT.start_ms, EVAL.end_ms)


@pytest.fixture(scope="module")
def scored(series: list[Series]) -> tuple[dict[str, Any], list[EvalData]]:
    models = {"model": _untrained(SEVEN), "current": _untrained(THREE)}
    return evaluate(models, series, EVAL, FIT)  # type: ignore[arg-type]


def test_the_fixtures_agree_at_the_levels_they_share(
    scored: tuple[dict[str, Any], list[EvalData]],
) -> None:
    _, data = scored
    for d in data:
        seven, three = d.forecasts["model"], d.forecasts["current"]
        assert seven.shape[2] == 7 and three.shape[2] == 3
        np.testing.assert_array_equal(seven[:, :, [1, 3, 5]], three)
        assert (seven[:, :, 0] < seven[:, :, 1]).all()  # the 0.05 level is a wider band


def test_coverage_is_the_0_1_to_0_9_band_for_both_models(
    scored: tuple[dict[str, Any], list[EvalData]], series: list[Series]
) -> None:
    report, data = scored
    for s, d in zip(series, data, strict=True):
        c = report["series"][s.name]["contenders"]
        assert c["model"]["levels"] == list(SEVEN) and c["current"]["levels"] == list(THREE)
        origins = valid_origins(s, 60, 15, EVAL.start_ms, EVAL.end_ms)
        actual = future_closes(s, origins, 15)
        for h in (1, 5, 15):
            seven = d.forecasts["model"][:, h - 1, :]
            inside = np.mean((actual[:, h - 1] >= seven[:, 1]) & (actual[:, h - 1] <= seven[:, 5]))
            outer = np.mean((actual[:, h - 1] >= seven[:, 0]) & (actual[:, h - 1] <= seven[:, 6]))
            m, cur = c["model"]["per_h"][h - 1], c["current"]["per_h"][h - 1]
            assert m["coverage"] == pytest.approx(inside) and cur["coverage"] == m["coverage"]
            assert outer > inside + 0.04  # what the outermost-levels rule would have reported
            width = np.mean((seven[:, 5] - seven[:, 1]) / s.close[origins] * 1e4)
            assert m["width_bps"] == pytest.approx(width) == cur["width_bps"]
            # per-level calibration: the observed share below each of the model's own levels
            below = [float(np.mean(actual[:, h - 1] <= seven[:, k])) for k in range(7)]
            assert m["calibration"] == pytest.approx(below)
            assert cur["calibration"] == [m["calibration"][k] for k in (1, 3, 5)]
    table = markdown_table(report)
    btc5 = report["series"]["binance:BTCUSDT"]["contenders"]["model"]["per_h"][4]
    cov = f"{100 * btc5['coverage']:.1f} %"
    assert "| coverage 0.1–0.9 |" in table and "coverage 10–90" not in table
    assert f"| binance:BTCUSDT | 5 | current | {100 * btc5['skill']:.2f} % | {cov} |" in table
    assert "| series | h | 0.05 | 0.1 | 0.25 | 0.5 | 0.75 | 0.9 | 0.95 |" in table


def test_ratios_compare_at_the_levels_both_sides_have(
    scored: tuple[dict[str, Any], list[EvalData]],
) -> None:
    report, _ = scored
    assert report["quantiles"] == list(SEVEN)  # the bands are scored at every level
    for entry in [*report["series"].values(), report["all"]]:
        c = entry["contenders"]
        assert c["ewma_band"]["levels"] == list(SEVEN)
        for h in range(15):
            m, cur = c["model"]["per_h"][h], c["current"]["per_h"][h]
            ewma = c["ewma_band"]["per_h"][h]["pinball_levels_bps"]
            assert m["pinball_bps"] == pytest.approx(np.mean(m["pinball_levels_bps"]))
            assert m["ewma_pinball_bps"] == pytest.approx(np.mean(ewma))
            assert cur["ewma_pinball_bps"] == pytest.approx(np.mean([ewma[k] for k in (1, 3, 5)]))
            assert m["pinball_ratio_ewma"] == pytest.approx(m["pinball_bps"] / np.mean(ewma))
            # the same band: equal losses at the shared levels, equal ratios to EWMA there
            assert [m["pinball_levels_bps"][k] for k in (1, 3, 5)] == cur["pinball_levels_bps"]
            # the tails lose less than the median: the 7-level mean alone looks far better
            assert m["pinball_bps"] < 0.95 * cur["pinball_bps"]
    table = markdown_table(report)
    assert "| binance:ETHUSDT | 15 | current |" in table
    assert "| 0.1/0.5/0.9 | 1.000 |" in table  # current against model at the shared levels


def test_the_gate_compares_the_two_models_at_their_common_levels(
    scored: tuple[dict[str, Any], list[EvalData]],
) -> None:
    report, _ = scored
    figures = gate_figures(report, "model", "current")
    assert figures.levels == THREE
    # identical forecasts at 0.1/0.5/0.9: a tie, which does not beat the current model; over
    # all of its own levels the 7-level model would have looked about 9 % better
    assert figures.candidate_pinball == pytest.approx(figures.current_pinball, rel=1e-12)
    pooled = report["all"]["contenders"]
    own = np.mean([r["pinball_bps"] for r in pooled["model"]["per_h"]])
    assert own < 0.95 * figures.current_pinball
    ewma = np.mean([r["ewma_pinball_bps"] for r in pooled["current"]["per_h"]])
    assert figures.ewma_pinball == pytest.approx(ewma)
    decision = gate(figures)
    assert not decision.promote
    assert any("does not beat the current model" in r for r in decision.reasons)
    assert decision.to_dict()["figures"]["levels"] == list(THREE)


def test_the_targets_table_has_every_cell(
    scored: tuple[dict[str, Any], list[EvalData]], series: list[Series], tmp_path: Path
) -> None:
    report, data = scored
    cells = {(t["series"], t["h"]) for t in report["targets"]}
    assert cells == {(s.name, h) for s in series for h in (1, 5, 15)}
    assert len(report["targets"]) == 6
    for t in report["targets"]:
        assert t["scored"]
        assert t["dir_ok"] is None if t["h"] == 1 else isinstance(t["dir_ok"], bool)
        assert t["level_worst"] in (0.05, 0.25, 0.5, 0.75, 0.95)  # not 0.1 or 0.9
    table = markdown_table(report)
    rows = [line for line in table.splitlines() if line.startswith("| binance:") and "met" in line]
    assert len(rows) == 6
    assert all(row.endswith(("| yes |", "| no |")) for row in rows)
    assert "Cells meeting each target: pinball vs EWMA " in table
    # scored on BTC alone, the ETH cells are still there, not met
    btc_only, _ = evaluate(
        {"model": _untrained(THREE)},  # type: ignore[dict-item]
        series[:1],
        EVAL,
        FIT,
    )
    eth = [t for t in btc_only["targets"] if t["series"] == "ETHUSDT"]
    assert [t["h"] for t in eth] == [1, 5, 15]
    assert not any(t["scored"] or t["met"] for t in eth)
    assert "| ETHUSDT | 5 |" + " not scored |" * 6 + " no |" in markdown_table(btc_only)
    files = plot_all(report, data, tmp_path, hours=1.0)  # the nested 7-level bands plot
    assert all(f.stat().st_size > 1000 for f in files)


def _row(**figures: Any) -> dict[str, Any]:
    row = {
        "pinball_ratio_ewma": 0.97,
        "pinball_ratio_har": 0.99,
        "skill": 0.0,
        "dir_accuracy": 0.52,
        "coverage": 0.79,
        "calibration": [0.1, 0.4851, 0.9],  # 0.5 is 1.49 points off
    }
    return row | figures


def test_each_target_at_its_bounds() -> None:
    def cell(h: int = 5, **figures: Any) -> dict[str, Any]:
        rows = [_row(**figures)] * 15
        entry = {"contenders": {"m": {"levels": list(THREE), "per_h": rows}}}
        report = {"series": {"binance:BTCUSDT": entry, "binance:ETHUSDT": entry}}
        return next(t for t in quality_targets(report, "m") if t["h"] == h)

    assert cell()["met"] and cell(coverage=0.81)["met"]  # every bound is inclusive
    assert cell(h=1, dir_accuracy=0.40)["met"]  # no direction target at h = 1
    assert cell(h=1)["dir_ok"] is None
    misses = {
        "pinball_ok": {"pinball_ratio_ewma": 0.9701},
        "pinball_har_ok": {"pinball_ratio_har": 0.9901},
        "skill_ok": {"skill": -1e-6},
        "dir_ok": {"dir_accuracy": 0.5199},
        "coverage_ok": {"coverage": 0.8101},
        "levels_ok": {"calibration": [0.1, 0.4849, 0.9]},
    }
    for key, figures in misses.items():
        t = cell(**figures)
        assert t[key] is False and not t["met"], key
    low = cell(coverage=0.7899, calibration=[0.05, 0.5, 0.95])
    assert not low["coverage_ok"]
    assert low["levels_ok"] and low["level_worst"] == 0.5  # 0.1 and 0.9 are the coverage's
