"""Honest scoring: any contract-conforming model against simple baselines on the same origins.

Contenders, all scored on exactly the same origins (gap-free window and horizon):

* ``persistence``: the price stays where it is (the point forecast to beat);
* ``drift``: the window's mean log return extrapolated;
* ``ewma_band``: RiskMetrics EWMA volatility (lambda 0.94, causal, restarted after each gap)
  with Gaussian quantiles around the last close, ``sigma * sqrt(h)``;
* ``static_quantiles``: the empirical quantiles of h-bar log returns on the fit range;
* ``har_band``: HAR realised variance (1/5/15/60/240 minutes) with minute-of-hour and
  hour-of-week seasonality, fitted on the fit range only (``trainer.har``): the strong
  classical band;
* the model(s), run through onnxruntime exactly as the streamer runs them.

Figures per horizon: MAE and RMSE in price and in bp of the last close, skill against
persistence (1 - MAE/MAE_persistence), directional accuracy and the share of origins where a
direction was called, coverage and width of the outer interval, mean pinball loss (bp) and its
ratios to the EWMA and the HAR band, and calibration (observed frequency below each quantile).
This module needs numpy and onnxruntime only (matplotlib for plots), never torch.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from streamer.core import scoring
from streamer.core.contracts import model as contract
from streamer.core.timefmt import iso_seconds
from streamer.core.types import MINUTE_MS
from trainer.dataset import Series, Split, future_closes, log_returns, valid_origins, windows
from trainer.har import HarBand
from trainer.registry import common_levels, pinball_at

BPS = 1e4
EWMA_LAMBDA = 0.94
BASELINES = ("persistence", "drift", "ewma_band", "static_quantiles", "har_band")
POINT_ONLY = ("persistence", "drift")
# the band whose coverage is reported and targeted, whatever other levels a model has
COVERAGE_BAND = (0.1, 0.9)
TARGET_HORIZONS = (1, 5, 15)
TARGET_SYMBOLS = ("BTCUSDT", "ETHUSDT")
TARGET_COVERAGE = (0.79, 0.81)
TARGET_LEVEL_GAP = 0.015  # every level but 0.1 and 0.9: observed share within 1.5 points
TARGET_DIR_ACCURACY = 0.52
TARGET_DIR_HORIZONS = (5, 15)
TARGET_PINBALL_RATIO = 0.97
TARGET_PINBALL_RATIO_HAR = 0.99
# The HAR band's clock factors need a week of 1-minute bars (every day of the week once, every
# minute of the hour 168 times); on less, a cell is a handful of minutes and one quiet minute's
# factor near 0 blows its band up, so a shorter fit range gets the plain HAR band.
HAR_SEASONAL_MIN_MS = 7 * 86_400_000


class Forecaster(Protocol):
    window: int
    horizon: int
    quantiles: tuple[float, ...]

    def predict(
        self, bars: npt.NDArray[np.float32], bar_time_s: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.float32]: ...


class OnnxForecaster:
    """A contract-1 or -2 ONNX model in onnxruntime, checked on load as the streamer checks it.

    ``interval_s`` is the bar interval of the data it will score: a model of another interval
    (daily bars, say) is refused rather than scored on bars it was not made for.
    """

    def __init__(
        self, model_bytes: bytes, threads: int = 1, *, interval_s: int = contract.INTERVAL_S
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.spec = contract.check_artifact(
            dict(self.session.get_modelmeta().custom_metadata_map),
            contract.declarations(self.session.get_inputs()),
            contract.declarations(self.session.get_outputs()),
            interval_s=interval_s,
        )
        self.window = self.spec.window
        self.horizon = self.spec.horizon
        self.quantiles = self.spec.quantiles

    @staticmethod
    def from_path(
        path: Path, threads: int = 1, *, interval_s: int = contract.INTERVAL_S
    ) -> OnnxForecaster:
        return OnnxForecaster(path.read_bytes(), threads, interval_s=interval_s)

    def predict(
        self, bars: npt.NDArray[np.float32], bar_time_s: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.float32]:
        """Quantiles of ``bars``; ``bar_time_s`` (each row's last bar open, epoch seconds) is
        fed to a contract-2 model, which needs it."""
        outs = []
        for start in range(0, bars.shape[0], 4096):
            end = start + 4096
            times = None if bar_time_s is None else bar_time_s[start:end]
            feed = contract.model_inputs(self.spec, bars[start:end], times)
            outs.append(self.session.run([contract.OUTPUT_NAME], feed)[0])
        if not outs:
            return np.zeros((0, self.horizon, len(self.quantiles)), dtype=np.float32)
        return np.asarray(np.concatenate(outs), dtype=np.float32)


# --- baselines -------------------------------------------------------------------------------


def ewma_sigma(series: Series, window: int, lam: float = EWMA_LAMBDA) -> npt.NDArray[np.float64]:
    """Causal EWMA volatility per bar; seeded with the mean squared return of a run's first
    ``window`` bars and restarted after every gap (NaN before the seed is available)."""
    r = log_returns(series)
    sigma = np.full(len(series), np.nan)
    n = len(series)
    run_first = np.ones(n, dtype=bool)
    if n > 1:
        run_first[1:] = np.diff(series.open_time_ms) != series.interval_ms
    starts = [*np.nonzero(run_first)[0].tolist(), n]
    for a, b in itertools.pairwise(starts):
        if b - a < window:
            continue
        var = float(np.mean(r[a + 1 : a + window] ** 2))
        out = np.empty(b - a - window + 1)
        out[0] = var
        sq = (r[a + window : b] ** 2).tolist()
        for i, value in enumerate(sq, start=1):
            var = lam * var + (1.0 - lam) * value
            out[i] = var
        sigma[a + window - 1 : b] = np.sqrt(out)
    return sigma


def static_return_quantiles(
    series: Sequence[Series], fit: Split, horizon: int, levels: Sequence[float]
) -> npt.NDArray[np.float64]:
    """Empirical quantiles ``[horizon, Q]`` of h-bar log returns over the fit range (any
    gap-free pair of bars ``t``, ``t+h`` inside it; no window is needed)."""
    pooled = []
    for s in series:
        origins = valid_origins(s, 1, horizon, fit.start_ms, fit.end_ms)
        if origins.shape[0]:
            pooled.append(np.log(future_closes(s, origins, horizon) / s.close[origins][:, None]))
    if not pooled:
        raise ValueError(
            f"no origins in the fit range {iso_seconds(fit.start_ms)}..{iso_seconds(fit.end_ms)}"
        )
    returns = np.concatenate(pooled)
    return np.asarray(np.quantile(returns, list(levels), axis=0).T, dtype=np.float64)


def baseline_forecasts(
    series: Series,
    origins: npt.NDArray[np.int64],
    window: int,
    horizon: int,
    levels: Sequence[float],
    static_q: npt.NDArray[np.float64],
    sigma: npt.NDArray[np.float64],
) -> dict[str, npt.NDArray[np.float64]]:
    """Price forecasts ``[n, horizon, Q]`` (points repeated over Q) of each baseline."""
    last = series.close[origins][:, None, None]
    n_q = len(levels)
    h = np.arange(1, horizon + 1, dtype=np.float64)[None, :, None]
    drift_rate = np.log(series.close[origins] / series.close[origins - window + 1]) / (window - 1)
    z = np.array([NormalDist().inv_cdf(q) for q in levels])[None, None, :]
    band = np.exp(z * sigma[origins][:, None, None] * np.sqrt(h))
    return {
        "persistence": np.broadcast_to(last, (origins.shape[0], horizon, n_q)).copy(),
        "drift": last * np.exp(drift_rate[:, None, None] * h) * np.ones((1, 1, n_q)),
        "ewma_band": last * band,
        "static_quantiles": last * np.exp(static_q[None, :, :]),
    }


# --- metrics ---------------------------------------------------------------------------------


def _pinball_levels(err: npt.NDArray[np.float64], levels: npt.NDArray[np.float64]) -> list[float]:
    """``err`` = actual - forecast, [n, Q] in bp; mean over origins, per level."""
    return [float(v) for v in np.mean(scoring.pinball_loss(err, levels), axis=0)]


def band_indices(levels: Sequence[float]) -> tuple[int, int] | None:
    """Where the 0.1 and 0.9 levels are in ``levels``; None if it lacks either."""
    lo, hi = COVERAGE_BAND
    return (list(levels).index(lo), list(levels).index(hi)) if {lo, hi} <= set(levels) else None


def horizon_metrics(
    pred: npt.NDArray[np.float64],
    actual: npt.NDArray[np.float64],
    last: npt.NDArray[np.float64],
    levels: Sequence[float],
    point_only: bool,
) -> list[dict[str, Any]]:
    """Per-horizon figures of one contender. ``pred`` [n, H, Q] prices, ``actual`` [n, H].

    Coverage and width are those of the 0.1-0.9 band (None for a contender without both
    levels), never of the outermost levels: a 0.05-0.95 band covers 90 %, not 80 %. Pinball is
    kept per level too, so contenders with different levels compare at the levels they share.
    """
    lv = np.asarray(levels, dtype=np.float64)
    med = pred[:, :, list(levels).index(0.5)]
    band = band_indices(levels)
    out = []
    for h in range(pred.shape[1]):
        err = med[:, h] - actual[:, h]
        err_bps = err / last * BPS
        called = np.sign(med[:, h] - last)
        moved = np.sign(actual[:, h] - last)
        both = (called != 0) & (moved != 0)
        row: dict[str, Any] = {
            "h": h + 1,
            "mae_price": float(np.mean(np.abs(err))),
            "rmse_price": float(np.sqrt(np.mean(err * err))),
            "mae_bps": float(np.mean(np.abs(err_bps))),
            "rmse_bps": float(np.sqrt(np.mean(err_bps * err_bps))),
            "dir_share": float(np.mean(both)),
            "dir_accuracy": float(np.mean(called[both] == moved[both])) if both.any() else None,
        }
        row |= {"coverage": None, "width_bps": None, "calibration": None}
        if not point_only:
            if band is not None:
                lo, hi = pred[:, h, band[0]], pred[:, h, band[1]]
                row["coverage"] = float(np.mean(scoring.covered(actual[:, h], lo, hi)))
                row["width_bps"] = float(np.mean((hi - lo) / last * BPS))
            row["calibration"] = [
                float(np.mean(actual[:, h] <= pred[:, h, k])) for k in range(len(levels))
            ]
        per_level = _pinball_levels((actual[:, h, None] - pred[:, h, :]) / last[:, None] * BPS, lv)
        row["pinball_levels_bps"] = per_level
        row["pinball_bps"] = float(np.mean(per_level))
        out.append(row)
    return out


# ratio key: (the band's pinball at the contender's levels, the band)
RATIO_TO = {
    "pinball_ratio_ewma": ("ewma_pinball_bps", "ewma_band"),
    "pinball_ratio_har": ("har_pinball_bps", "har_band"),
}


def _add_relative(
    contenders: dict[str, list[dict[str, Any]]],
    levels: dict[str, tuple[float, ...]],
    key: str,
) -> None:
    """Skill against persistence (on ``key``) and pinball ratios to the EWMA and the HAR band,
    in place. A ratio compares at the levels both sides have (``common_levels``): the bands are
    scored at every level of every contender, so that is the contender's own levels."""
    base = contenders["persistence"]
    for name, rows in contenders.items():
        for h, row in enumerate(rows):
            skill = scoring.skill(row[key], base[h][key]) if h < len(base) else None
            row["skill"] = None if h >= len(base) else 0.0 if skill is None else skill
            for ratio, (band_key, band_name) in RATIO_TO.items():
                band = contenders.get(band_name)
                if band is None or h >= len(band):
                    row[ratio] = row[band_key] = None
                    continue
                at = common_levels(levels[name], levels[band_name])
                b = pinball_at(band[h], levels[band_name], at)
                row[band_key] = b
                row[ratio] = pinball_at(row, levels[name], at) / b if b else None


def _mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over horizons of every figure (per level for the per-level lists)."""
    out: dict[str, Any] = {}
    for k in (k for k in rows[0] if k != "h"):
        values = [r[k] for r in rows if r[k] is not None]
        if values and isinstance(values[0], list):
            out[k] = [float(v) for v in np.mean(values, axis=0)]
        else:
            out[k] = float(np.mean(values)) if values else None
    return out


def _entry(levels: Sequence[float], rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"levels": list(levels), "per_h": rows, "mean": _mean_row(rows)}


@dataclass(frozen=True, slots=True)
class EvalData:
    """What one contender forecast for one series (kept for plots)."""

    series: str
    open_time_ms: npt.NDArray[np.int64]  # origin bar open times
    last: npt.NDArray[np.float64]
    actual: npt.NDArray[np.float64]
    forecasts: dict[str, npt.NDArray[np.float64]]


def har_seasonal(series: Sequence[Series], fit: Split) -> bool:
    """Whether the HAR band gets its clock factors: 1-minute bars, a week of them in the fit
    range (first to last bar, in some series)."""
    if not series or any(s.interval_ms != MINUTE_MS for s in series):
        return False
    spans = []
    for s in series:
        inside = s.open_time_ms[(s.open_time_ms >= fit.start_ms) & (s.open_time_ms < fit.end_ms)]
        if inside.shape[0]:
            spans.append(int(inside[-1]) - int(inside[0]) + MINUTE_MS)
    return max(spans, default=0) >= HAR_SEASONAL_MIN_MS


def evaluate(
    models: dict[str, Forecaster],
    series: Sequence[Series],
    eval_split: Split,
    fit_split: Split,
    levels: Sequence[float] | None = None,
    history: list[dict[str, float]] | None = None,
) -> tuple[dict[str, Any], list[EvalData]]:
    """Score the models and the baselines on the same origins; returns (report, data).

    Origins need the longest window and horizon of all models, so every contender sees the
    same minutes. The baselines are scored at every level any model has (and 0.1, 0.5 and 0.9,
    plus ``levels`` if given), so each model's ratios, and any two models, compare at levels
    both sides have; the report keeps every contender's ``levels``. ``fit_split`` (earlier
    data: the training period) fits the static quantiles and the HAR band, nothing else; either
    raises ValueError when it holds no origins. The HAR band has its clock seasonality on
    1-minute bars with a week in the fit range (``har_seasonal``), else it is the plain HAR
    band.
    """
    if not models:
        raise ValueError("nothing to evaluate: no model given")
    window = max(m.window for m in models.values())
    horizon = max(m.horizon for m in models.values())
    wanted = {*(levels or ()), *COVERAGE_BAND, 0.5}
    levels = tuple(sorted(wanted.union(*(m.quantiles for m in models.values()))))
    levels_of = {name: tuple(levels) for name in BASELINES} | {
        name: tuple(m.quantiles) for name, m in models.items()
    }
    static_q = static_return_quantiles(series, fit_split, horizon, levels)
    seasonal = har_seasonal(series, fit_split)
    har = HarBand.fit(series, fit_split, horizon, seasonal=seasonal)
    per_series: dict[str, Any] = {}
    data: list[EvalData] = []
    pooled: dict[str, list[npt.NDArray[np.float64]]] = {}
    pooled_actual, pooled_last = [], []
    for s in series:
        origins = valid_origins(s, window, horizon, eval_split.start_ms, eval_split.end_ms)
        if origins.shape[0] == 0:
            continue
        actual = future_closes(s, origins, horizon)
        last = s.close[origins]
        sigma = ewma_sigma(s, window)
        forecasts = baseline_forecasts(s, origins, window, horizon, levels, static_q, sigma)
        forecasts["har_band"] = har.forecasts(s, origins, horizon, levels)
        for name, model in models.items():
            x = windows(s, origins, model.window)
            bar_time_s = s.open_time_ms[origins] // 1000  # contract 2 models take the time
            forecasts[name] = model.predict(x, bar_time_s).astype(np.float64)
        contenders: dict[str, list[dict[str, Any]]] = {}
        for name, pred in forecasts.items():
            contenders[name] = horizon_metrics(
                pred, actual[:, : pred.shape[1]], last, levels_of[name], name in POINT_ONLY
            )
            pooled.setdefault(name, []).append(pred / last[:, None, None])
        _add_relative(contenders, levels_of, "mae_price")
        per_series[s.name] = {
            "origins": int(origins.shape[0]),
            "first_origin": iso_seconds(int(s.open_time_ms[origins[0]])),
            "last_origin": iso_seconds(int(s.open_time_ms[origins[-1]])),
            "contenders": {
                name: _entry(levels_of[name], rows) for name, rows in contenders.items()
            },
        }
        pooled_actual.append(actual / last[:, None])
        pooled_last.append(np.ones_like(last))
        data.append(EvalData(s.name, s.open_time_ms[origins], last, actual, forecasts))
    if not per_series:
        raise ValueError(
            f"no gap-free origins in {iso_seconds(eval_split.start_ms)}.."
            f"{iso_seconds(eval_split.end_ms)}"
        )
    actual_all = np.concatenate(pooled_actual)
    last_all = np.concatenate(pooled_last)
    all_contenders: dict[str, list[dict[str, Any]]] = {}
    for name, parts in pooled.items():
        pred = np.concatenate(parts)
        rows = horizon_metrics(
            pred, actual_all[:, : pred.shape[1]], last_all, levels_of[name], name in POINT_ONLY
        )
        for row in rows:  # prices are relative to the last close here: only bp figures mean much
            row.pop("mae_price")
            row.pop("rmse_price")
        all_contenders[name] = rows
    _add_relative(all_contenders, levels_of, "mae_bps")
    report: dict[str, Any] = {
        "window": window,
        "horizon": horizon,
        "quantiles": list(levels),
        "eval": eval_split.describe(),
        "fit": fit_split.describe(),
        "har_seasonal": seasonal,
        "models": list(models),
        "baselines": list(BASELINES),
        "series": per_series,
        "all": {
            "origins": int(actual_all.shape[0]),
            "contenders": {
                name: _entry(levels_of[name], rows) for name, rows in all_contenders.items()
            },
        },
    }
    if history is not None:
        report["history"] = history
    report["targets"] = quality_targets(report, next(iter(models)))
    return report, data


# what each target checks, in the order the targets table shows them: (ok key, label)
TARGET_CHECKS = (
    ("pinball_ok", "pinball vs EWMA"),
    ("pinball_har_ok", "pinball vs HAR"),
    ("skill_ok", "skill"),
    ("dir_ok", "direction"),
    ("coverage_ok", "coverage"),
    ("levels_ok", "other levels"),
)


def _target_cell(
    series: str, h: int, row: dict[str, Any] | None, levels: Sequence[float]
) -> dict[str, Any]:
    """One target cell: the figures and, per target, True/False (None: no target at this h).
    A cell with no scored row (series absent, horizon too short) meets nothing."""
    cell: dict[str, Any] = {"series": series, "h": h, "scored": row is not None}
    r = row or {}
    ratio, ratio_har = r.get("pinball_ratio_ewma"), r.get("pinball_ratio_har")
    skill, acc, cov = r.get("skill"), r.get("dir_accuracy"), r.get("coverage")
    calibration = r.get("calibration")
    gaps = [
        (seen - q, q)
        for q, seen in zip(levels, calibration or [], strict=False)
        if q not in COVERAGE_BAND
    ]
    gap, worst = max(gaps, key=lambda g: abs(g[0])) if gaps else (None, None)
    cell |= {
        "pinball_ratio_ewma": ratio,
        "pinball_ok": ratio is not None and ratio <= TARGET_PINBALL_RATIO,
        "pinball_ratio_har": ratio_har,
        "pinball_har_ok": ratio_har is not None and ratio_har <= TARGET_PINBALL_RATIO_HAR,
        "skill": skill,
        "skill_ok": skill is not None and skill >= 0.0,
        "dir_accuracy": acc,
        "dir_ok": (acc is not None and acc >= TARGET_DIR_ACCURACY)
        if h in TARGET_DIR_HORIZONS
        else None,
        "coverage": cov,
        "coverage_ok": cov is not None and TARGET_COVERAGE[0] <= cov <= TARGET_COVERAGE[1],
        "level_worst": worst,
        "level_gap": gap,
        "levels_ok": gap is not None and abs(gap) <= TARGET_LEVEL_GAP,
    }
    cell["met"] = row is not None and all(cell[k] is not False for k, _ in TARGET_CHECKS)
    return cell


def quality_targets(report: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """Every target cell (each target symbol at h = 1, 5, 15), each with met or not met; a
    target symbol or horizon the report did not score is listed as not met."""
    out = []
    for symbol in TARGET_SYMBOLS:
        names = [n for n in report["series"] if n.split(":")[-1] == symbol] or [symbol]
        for name, h in itertools.product(names, TARGET_HORIZONS):
            entry = report["series"].get(name, {}).get("contenders", {}).get(model)
            rows = entry["per_h"] if entry else []
            levels = entry["levels"] if entry else []
            out.append(_target_cell(name, h, rows[h - 1] if h <= len(rows) else None, levels))
    return out


# --- report ----------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def _num(value: float | None, digits: int = 2) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


def _levels(levels: Sequence[float]) -> str:
    return "/".join(f"{q:g}" for q in levels)


def _verdict(ok: bool | None) -> str:
    return "no target" if ok is None else "met" if ok else "not met"


def _target_rows(targets: list[dict[str, Any]]) -> list[str]:
    """The targets table: every cell, every target's figure with met or not met."""
    lines = [
        f"| series | h | pinball / EWMA (≤ {TARGET_PINBALL_RATIO}) | "
        f"pinball / HAR (≤ {TARGET_PINBALL_RATIO_HAR}) | skill (≥ 0) | "
        f"dir. acc. (≥ {100 * TARGET_DIR_ACCURACY:.0f} % at h = "
        f"{', '.join(str(h) for h in TARGET_DIR_HORIZONS)}) | "
        f"coverage 0.1–0.9 ({100 * TARGET_COVERAGE[0]:.0f}–{100 * TARGET_COVERAGE[1]:.0f} %) | "
        f"worst other level (± {100 * TARGET_LEVEL_GAP:.1f} pt) | all met |",
        "|---|---:|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        if not t["scored"]:
            lines.append(f"| {t['series']} | {t['h']} |" + " not scored |" * 6 + " no |")
            continue
        gap = t["level_gap"]
        worst = "–" if gap is None else f"{t['level_worst']:g}: {100 * gap:+.1f} pt"
        cells = (
            (_num(t["pinball_ratio_ewma"], 3), t["pinball_ok"]),
            (_num(t["pinball_ratio_har"], 3), t["pinball_har_ok"]),
            (_pct(t["skill"], 2), t["skill_ok"]),
            (_pct(t["dir_accuracy"]), t["dir_ok"]),
            (_pct(t["coverage"]), t["coverage_ok"]),
            (worst, t["levels_ok"]),
        )
        shown = " | ".join(f"{value} {_verdict(ok)}" for value, ok in cells)
        lines.append(f"| {t['series']} | {t['h']} | {shown} | {'yes' if t['met'] else 'no'} |")
    return lines


def targets_summary(targets: list[dict[str, Any]]) -> str:
    """One sentence: which targets are met in how many of their cells."""
    parts = []
    for key, label in TARGET_CHECKS:
        cells = [t for t in targets if key != "dir_ok" or t["h"] in TARGET_DIR_HORIZONS]
        met = sum(1 for t in cells if t[key])
        parts.append(f"{label} {met} of {len(cells)}")
    all_met = sum(1 for t in targets if t["met"])
    n = len(targets)
    return f"Cells meeting each target: {'; '.join(parts)}; all targets: {all_met} of {n}."


def markdown_table(report: dict[str, Any], model: str = "model") -> str:
    """The evaluation tables per series and horizon (h = 1, 5, 15 and the last one), the
    model's calibration per level, every contender's means and the targets, cell by cell."""
    horizon = report["horizon"]
    shown = sorted({h for h in (*TARGET_HORIZONS, horizon) if h <= horizon})
    har = (
        "HAR band (minute-of-hour and hour-of-week seasonality)"
        if report.get("har_seasonal")
        else "HAR band (plain: no clock seasonality on this fit range)"
    )
    pooled = report["all"]["contenders"]
    model_levels = pooled[model]["levels"]
    others = [name for name in report["models"] if name != model]
    levels_line = "; ".join(f"{n} {_levels(pooled[n]['levels'])}" for n in report["models"])
    lines = [
        f"Evaluation window {report['eval']['start']} .. {report['eval']['end']} "
        f"(never used for training or tuning); static quantiles and {har} fitted on "
        f"{report['fit']['start']} .. {report['fit']['end']}.",
        "",
        f"Levels: {levels_line}; the baselines are scored at {_levels(report['quantiles'])}. "
        "Pinball is the mean over a contender's own levels, and every ratio compares at the "
        "levels both sides have (for a model against a band: the model's). Coverage and width "
        "are those of the 0.1–0.9 band.",
        "",
        "| series | h | origins | MAE model (bp) | MAE persistence (bp) | skill | "
        "dir. acc. (share) | coverage 0.1–0.9 | width (bp) | pinball model (bp) | "
        "pinball EWMA (bp) | ratio to EWMA | pinball HAR (bp) | ratio to HAR |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    entries = [*report["series"].items(), ("all (pooled, bp)", report["all"])]
    for name, entry in entries:
        c = entry["contenders"]
        for h in shown:
            m = c[model]["per_h"][h - 1] if h <= len(c[model]["per_h"]) else None
            if m is None:
                continue
            p = c["persistence"]["per_h"][h - 1]
            acc = m["dir_accuracy"]
            lines.append(
                f"| {name} | {h} | {entry['origins']} | {_num(m['mae_bps'])} | "
                f"{_num(p['mae_bps'])} | {_pct(m['skill'], 2)} | "
                f"{_pct(acc)} ({_pct(m['dir_share'], 0)}) | {_pct(m['coverage'])} | "
                f"{_num(m['width_bps'], 1)} | {_num(m['pinball_bps'], 3)} | "
                f"{_num(m['ewma_pinball_bps'], 3)} | {_num(m['pinball_ratio_ewma'], 3)} | "
                f"{_num(m['har_pinball_bps'], 3)} | {_num(m['pinball_ratio_har'], 3)} |"
            )
    lines += ["", f"Calibration of {model}: observed share of outcomes below each level:", ""]
    lines += [
        "| series | h | " + " | ".join(f"{q:g}" for q in model_levels) + " |",
        "|---|---:|" + "---:|" * len(model_levels),
    ]
    for name, entry in entries:
        rows = entry["contenders"][model]["per_h"]
        for h in (h for h in shown if h <= len(rows)):
            seen = rows[h - 1]["calibration"] or []
            lines.append(f"| {name} | {h} | " + " | ".join(_pct(v) for v in seen) + " |")
    if others:
        lines += [
            "",
            f"The other models, per series and horizon (the last column: pinball against {model}'s "
            "at the levels both have):",
            "",
            "| series | h | model | skill | coverage 0.1–0.9 | pinball (bp) | ratio to EWMA | "
            f"ratio to HAR | levels compared | ratio to {model} |",
            "|---|---:|---|---:|---:|---:|---:|---:|---|---:|",
        ]
        for (name, entry), h, other in itertools.product(entries, shown, others):
            c = entry["contenders"]
            rows, own = c[other]["per_h"], c[model]["per_h"]
            if h <= len(rows) and h <= len(own):
                o = rows[h - 1]
                at = common_levels(c[other]["levels"], c[model]["levels"])
                vs = pinball_at(o, c[other]["levels"], at) / pinball_at(
                    own[h - 1], c[model]["levels"], at
                )
                lines.append(
                    f"| {name} | {h} | {other} | {_pct(o['skill'], 2)} | {_pct(o['coverage'])} | "
                    f"{_num(o['pinball_bps'], 3)} | {_num(o['pinball_ratio_ewma'], 3)} | "
                    f"{_num(o['pinball_ratio_har'], 3)} | {_levels(at)} | {_num(vs, 3)} |"
                )
    lines += ["", "Every contender, mean over horizons 1..H (pooled, bp):", ""]
    lines += [
        "| contender | levels | MAE (bp) | skill | coverage 0.1–0.9 | width (bp) | pinball (bp) | "
        "ratio to EWMA | ratio to HAR |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in pooled.items():
        mean = entry["mean"]
        lines.append(
            f"| {name} | {_levels(entry['levels'])} | {_num(mean['mae_bps'])} | "
            f"{_pct(mean['skill'], 2)} | {_pct(mean['coverage'])} | "
            f"{_num(mean['width_bps'], 1)} | {_num(mean['pinball_bps'], 3)} | "
            f"{_num(mean['pinball_ratio_ewma'], 3)} | {_num(mean['pinball_ratio_har'], 3)} |"
        )
    targets = report.get("targets", [])
    if targets:
        lines += [
            "",
            f"Quality targets of {model}, every cell (BTC and ETH at h = "
            f"{', '.join(str(h) for h in TARGET_HORIZONS)}):",
            "",
            *_target_rows(targets),
            "",
            targets_summary(targets),
        ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path, stem: str = "report") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    md_path.write_text(markdown_table(report))
    return [json_path, md_path]


def metrics_summary(report: dict[str, Any], model: str = "model") -> dict[str, Any]:
    """The compact figures that travel in the artifact's ``tickcast.metrics`` metadata."""
    horizon = report["horizon"]
    shown = sorted({h for h in (*TARGET_HORIZONS, horizon) if h <= horizon})
    keys = (
        "mae_bps",
        "skill",
        "dir_accuracy",
        "coverage",
        "width_bps",
        "pinball_bps",
        "pinball_ratio_ewma",
        "pinball_ratio_har",
    )
    summary: dict[str, Any] = {
        "eval": report["eval"],
        "origins": report["all"]["origins"],
        "levels": report["all"]["contenders"][model]["levels"],
        "mean": {
            name: {k: entry["mean"].get(k) for k in keys}
            for name, entry in report["all"]["contenders"].items()
        },
        "per_series": {},
    }
    for name, entry in report["series"].items():
        c = entry["contenders"]
        summary["per_series"][name] = {  # the bands' pinball at the model's levels
            f"h{h}": {
                k: c[model]["per_h"][h - 1].get(k)
                for k in (*keys, "ewma_pinball_bps", "har_pinball_bps")
            }
            for h in shown
        }
    return summary


# --- plots -----------------------------------------------------------------------------------


def _pick_series(data: list[EvalData], wanted: str) -> EvalData:
    for d in data:
        if d.series == wanted:
            return d
    if wanted:
        raise ValueError(f"no evaluation data for {wanted!r}; have {[d.series for d in data]}")
    return data[0]


def plot_forecast(
    d: EvalData,
    out: Path,
    hours: float,
    start_ms: int | None,
    horizons: tuple[int, ...],
    levels: Sequence[float],
    interval_ms: int,
    model: str = "model",
    baseline_levels: Sequence[float] | None = None,
) -> Path:
    """Actual closes against the model's median and its nested bands (every pair of levels
    ``q``, ``1 - q`` it has), and the EWMA 0.1-0.9 band, for forecasts made ``h`` bars before
    each plotted bar. ``baseline_levels``: the EWMA band's levels (default ``levels``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    first = int(d.open_time_ms[0]) if start_ms is None else start_ms
    stop = first + int(hours * 3_600_000)
    keep = (d.open_time_ms >= first) & (d.open_time_ms < stop)
    if not keep.any():
        keep = np.arange(d.open_time_ms.shape[0]) < int(hours * 3_600_000 // interval_ms)
    med = list(levels).index(0.5)
    pairs = [
        (i, list(levels).index(round(1.0 - q, 9)))
        for i, q in enumerate(levels)
        if q < 0.5 and round(1.0 - q, 9) in levels
    ]
    ewma_lo, ewma_hi = band_indices(baseline_levels or levels) or (0, -1)
    fig, axes = plt.subplots(len(horizons), 1, figsize=(11, 3.4 * len(horizons)), sharex=True)
    axes_list = np.atleast_1d(axes).tolist()
    for ax, h in zip(axes_list, horizons, strict=True):
        t_target = (d.open_time_ms[keep] + h * interval_ms).astype("datetime64[ms]")
        t_actual = (d.open_time_ms[keep] + interval_ms).astype("datetime64[ms]")
        pred = d.forecasts[model][keep, h - 1, :]
        ewma = d.forecasts["ewma_band"][keep, h - 1, :]
        ax.plot(t_actual, d.actual[keep, 0], color="black", lw=1.0, label="actual close")
        ax.plot(t_target, pred[:, med], color="tab:blue", lw=1.0, label="model median")
        for lo, hi in pairs:  # outermost first, lightest; the nested inner bands darken it
            ax.fill_between(
                t_target,
                pred[:, lo],
                pred[:, hi],
                color="tab:blue",
                alpha=0.18,
                lw=0,
                label=f"model {levels[lo]:g}–{levels[hi]:g} band",
            )
        ewma_label = "EWMA 0.1–0.9 band"
        ax.plot(t_target, ewma[:, ewma_lo], color="tab:orange", lw=0.7, ls="--", label=ewma_label)
        ax.plot(t_target, ewma[:, ewma_hi], color="tab:orange", lw=0.7, ls="--")
        ax.set_title(f"{d.series}: forecasts made {h} bar(s) ahead")
        ax.set_ylabel("price")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    axes_list[-1].xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))  # type: ignore[no-untyped-call]
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_losses(history: list[dict[str, float]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [row["epoch"] for row in history]
    train = [row["train_loss"] for row in history]
    val = [row["val_loss"] for row in history]
    ax.plot(epochs[1:], train[1:], marker="o", label="training (running mean)")
    ax.plot(epochs, val, marker="o", label="validation")
    ax.set_xlabel("epoch (0 = untrained: Gaussian band on window volatility)")
    ax.set_ylabel("mean pinball loss (bp)")
    ax.set_title("Training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_calibration(report: dict[str, Any], out: Path, model: str = "model") -> Path:
    """Nominal quantile level against the observed share of outcomes below it (pooled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = report["horizon"]
    shown = sorted({h for h in (*TARGET_HORIZONS, horizon) if h <= horizon})
    contenders = report["all"]["contenders"]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 4), sharey=True)
    for ax, h in zip(np.atleast_1d(axes).tolist(), shown, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        styles = (
            (model, "o-"),
            ("ewma_band", "s--"),
            ("har_band", "d-."),
            ("static_quantiles", "^:"),
        )
        for name, style in styles:
            rows = contenders.get(name, {}).get("per_h", [])
            if h <= len(rows) and rows[h - 1]["calibration"] is not None:
                levels = contenders[name]["levels"]
                ax.plot(levels, rows[h - 1]["calibration"], style, label=name)
        ax.set_title(f"h = {h}")
        ax.set_xlabel("nominal quantile level")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("observed share below the quantile")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle("Calibration (all series pooled)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_all(
    report: dict[str, Any],
    data: list[EvalData],
    out_dir: Path,
    plot_series: str = "",
    hours: float = 6.0,
    start_ms: int | None = None,
    interval_ms: int = 60_000,
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = report["models"][0]
    horizon = report["horizon"]
    horizons = tuple(sorted({1, horizon}))
    paths = [
        plot_forecast(
            _pick_series(data, plot_series),
            out_dir / "forecast.png",
            hours,
            start_ms,
            horizons,
            report["all"]["contenders"][model]["levels"],
            interval_ms,
            model,
            report["quantiles"],
        ),
        plot_calibration(report, out_dir / "calibration.png", model),
    ]
    if report.get("history"):
        paths.append(plot_losses(report["history"], out_dir / "loss.png"))
    return paths
