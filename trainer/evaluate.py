"""Honest scoring: any contract-conforming model against simple baselines on the same origins.

Contenders, all scored on exactly the same origins (gap-free window and horizon):

* ``persistence``: the price stays where it is (the point forecast to beat);
* ``drift``: the window's mean log return extrapolated;
* ``ewma_band``: RiskMetrics EWMA volatility (lambda 0.94, causal, restarted after each gap)
  with Gaussian quantiles around the last close, ``sigma * sqrt(h)``;
* ``static_quantiles``: the empirical quantiles of h-bar log returns on the fit range;
* the model(s), run through onnxruntime exactly as the streamer runs them.

Figures per horizon: MAE and RMSE in price and in bp of the last close, skill against
persistence (1 - MAE/MAE_persistence), directional accuracy and the share of origins where a
direction was called, coverage and width of the outer interval, mean pinball loss (bp) and its
ratio to the EWMA band, and calibration (observed frequency below each quantile). This module
needs numpy and onnxruntime only (matplotlib for plots), never torch.
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

from streamer.core import contract
from trainer.dataset import Series, Split, future_closes, iso_ms, valid_origins, windows

BPS = 1e4
EWMA_LAMBDA = 0.94
BASELINES = ("persistence", "drift", "ewma_band", "static_quantiles")
POINT_ONLY = ("persistence", "drift")
TARGET_HORIZONS = (1, 5, 15)
TARGET_SYMBOLS = ("BTCUSDT", "ETHUSDT")
TARGET_COVERAGE = (0.78, 0.82)
TARGET_PINBALL_RATIO = 0.97


class Forecaster(Protocol):
    window: int
    horizon: int
    quantiles: tuple[float, ...]

    def predict(self, bars: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...


class OnnxForecaster:
    """A contract-1 ONNX model in onnxruntime; the metadata is validated on load."""

    def __init__(self, model_bytes: bytes, threads: int = 1, lenient: bool = False) -> None:
        import onnx
        import onnxruntime as ort

        proto = onnx.load_model_from_string(model_bytes)
        meta = {p.key: p.value for p in proto.metadata_props}
        if lenient:  # a model of another interval (daily bars): everything but the interval
            meta[contract.META_INTERVAL] = str(contract.INTERVAL_S)
        self.spec = contract.parse_metadata(meta)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        contract.check_io_shapes(inp.name, list(inp.shape), out.name, list(out.shape), self.spec)
        self.window = self.spec.window
        self.horizon = self.spec.horizon
        self.quantiles = self.spec.quantiles

    @staticmethod
    def from_path(path: Path, threads: int = 1) -> OnnxForecaster:
        return OnnxForecaster(path.read_bytes(), threads)

    def predict(self, bars: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        outs = []
        for start in range(0, bars.shape[0], 4096):
            chunk = np.ascontiguousarray(bars[start : start + 4096], dtype=np.float32)
            outs.append(self.session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: chunk})[0])
        if not outs:
            return np.zeros((0, self.horizon, len(self.quantiles)), dtype=np.float32)
        return np.asarray(np.concatenate(outs), dtype=np.float32)


# --- baselines -------------------------------------------------------------------------------


def log_returns(series: Series) -> npt.NDArray[np.float64]:
    """1-bar log returns, 0 on the first bar of each gap-free run."""
    r = np.zeros(len(series))
    if len(series) > 1:
        r[1:] = np.log(series.close[1:] / series.close[:-1])
        r[1:][np.diff(series.open_time_ms) != series.interval_ms] = 0.0
    return r


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
            f"no origins in the fit range {iso_ms(fit.start_ms)}..{iso_ms(fit.end_ms)}"
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


def _pinball(err: npt.NDArray[np.float64], levels: npt.NDArray[np.float64]) -> float:
    """``err`` = actual - forecast, [n, Q] in bp; mean over origins and levels."""
    return float(np.mean(np.maximum(levels * err, (levels - 1.0) * err)))


def horizon_metrics(
    pred: npt.NDArray[np.float64],
    actual: npt.NDArray[np.float64],
    last: npt.NDArray[np.float64],
    levels: Sequence[float],
    point_only: bool,
) -> list[dict[str, Any]]:
    """Per-horizon figures of one contender. ``pred`` [n, H, Q] prices, ``actual`` [n, H]."""
    lv = np.asarray(levels, dtype=np.float64)
    med = pred[:, :, list(levels).index(0.5)]
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
        if point_only:
            row |= {"coverage": None, "width_bps": None, "calibration": None}
        else:
            lo, hi = pred[:, h, 0], pred[:, h, -1]
            row |= {
                "coverage": float(np.mean((actual[:, h] >= lo) & (actual[:, h] <= hi))),
                "width_bps": float(np.mean((hi - lo) / last * BPS)),
                "calibration": [
                    float(np.mean(actual[:, h] <= pred[:, h, k])) for k in range(len(levels))
                ],
            }
        row["pinball_bps"] = _pinball(
            (actual[:, h, None] - pred[:, h, :]) / last[:, None] * BPS, lv
        )
        out.append(row)
    return out


def _add_relative(contenders: dict[str, list[dict[str, Any]]], key: str) -> None:
    """Skill against persistence (on ``key``) and pinball ratio to the EWMA band, in place."""
    base = contenders["persistence"]
    ewma = contenders.get("ewma_band")
    for rows in contenders.values():
        for h, row in enumerate(rows):
            if h >= len(base):
                row["skill"] = None
                row["pinball_ratio_ewma"] = None
                continue
            ref = base[h][key]
            row["skill"] = 1.0 - row[key] / ref if ref > 0 else 0.0
            e = ewma[h]["pinball_bps"] if ewma is not None and h < len(ewma) else None
            row["pinball_ratio_ewma"] = row["pinball_bps"] / e if e else None


def _mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in rows[0] if k not in ("h", "calibration")]
    out: dict[str, Any] = {}
    for k in keys:
        values = [r[k] for r in rows if r[k] is not None]
        out[k] = float(np.mean(values)) if values else None
    return out


@dataclass(frozen=True, slots=True)
class EvalData:
    """What one contender forecast for one series (kept for plots)."""

    series: str
    open_time_ms: npt.NDArray[np.int64]  # origin bar open times
    last: npt.NDArray[np.float64]
    actual: npt.NDArray[np.float64]
    forecasts: dict[str, npt.NDArray[np.float64]]


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
    same minutes. ``fit_split`` (earlier data) fits the static quantiles only.
    """
    if not models:
        raise ValueError("nothing to evaluate: no model given")
    window = max(m.window for m in models.values())
    horizon = max(m.horizon for m in models.values())
    first = next(iter(models.values()))
    levels = tuple(levels or first.quantiles)
    static_q = static_return_quantiles(series, fit_split, horizon, levels)
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
        for name, model in models.items():
            x = windows(s, origins, model.window)
            forecasts[name] = model.predict(x).astype(np.float64)
        contenders: dict[str, list[dict[str, Any]]] = {}
        for name, pred in forecasts.items():
            model_levels = models[name].quantiles if name in models else levels
            contenders[name] = horizon_metrics(
                pred, actual[:, : pred.shape[1]], last, model_levels, name in POINT_ONLY
            )
            pooled.setdefault(name, []).append(pred / last[:, None, None])
        _add_relative(contenders, "mae_price")
        per_series[s.name] = {
            "origins": int(origins.shape[0]),
            "first_origin": iso_ms(int(s.open_time_ms[origins[0]])),
            "last_origin": iso_ms(int(s.open_time_ms[origins[-1]])),
            "contenders": {
                name: {"per_h": rows, "mean": _mean_row(rows)} for name, rows in contenders.items()
            },
        }
        pooled_actual.append(actual / last[:, None])
        pooled_last.append(np.ones_like(last))
        data.append(EvalData(s.name, s.open_time_ms[origins], last, actual, forecasts))
    if not per_series:
        raise ValueError(
            f"no gap-free origins in {iso_ms(eval_split.start_ms)}..{iso_ms(eval_split.end_ms)}"
        )
    actual_all = np.concatenate(pooled_actual)
    last_all = np.concatenate(pooled_last)
    all_contenders: dict[str, list[dict[str, Any]]] = {}
    for name, parts in pooled.items():
        pred = np.concatenate(parts)
        model_levels = models[name].quantiles if name in models else levels
        rows = horizon_metrics(
            pred, actual_all[:, : pred.shape[1]], last_all, model_levels, name in POINT_ONLY
        )
        for row in rows:  # prices are relative to the last close here: only bp figures mean much
            row.pop("mae_price")
            row.pop("rmse_price")
        all_contenders[name] = rows
    _add_relative(all_contenders, "mae_bps")
    report: dict[str, Any] = {
        "window": window,
        "horizon": horizon,
        "quantiles": list(levels),
        "eval": eval_split.describe(),
        "fit": fit_split.describe(),
        "models": list(models),
        "baselines": list(BASELINES),
        "series": per_series,
        "all": {
            "origins": int(actual_all.shape[0]),
            "contenders": {
                name: {"per_h": rows, "mean": _mean_row(rows)}
                for name, rows in all_contenders.items()
            },
        },
    }
    if history is not None:
        report["history"] = history
    report["targets"] = quality_targets(report, next(iter(models)))
    return report, data


def quality_targets(report: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """The issue's quality targets per target symbol and horizon, each with pass/fail."""
    out = []
    for name, entry in report["series"].items():
        if name.split(":")[-1] not in TARGET_SYMBOLS:
            continue
        rows = entry["contenders"][model]["per_h"]
        for h in TARGET_HORIZONS:
            if h > len(rows):
                continue
            row = rows[h - 1]
            cov = row["coverage"]
            ratio = row["pinball_ratio_ewma"]
            out.append(
                {
                    "series": name,
                    "h": h,
                    "skill": row["skill"],
                    "skill_ok": row["skill"] is not None and row["skill"] >= 0.0,
                    "coverage": cov,
                    "coverage_ok": cov is not None
                    and TARGET_COVERAGE[0] <= cov <= TARGET_COVERAGE[1],
                    "pinball_ratio_ewma": ratio,
                    "pinball_ok": ratio is not None and ratio <= TARGET_PINBALL_RATIO,
                }
            )
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


def markdown_table(report: dict[str, Any], model: str = "model") -> str:
    """The evaluation table per series and horizon (h = 1, 5, 15 and the last one)."""
    horizon = report["horizon"]
    shown = sorted({h for h in (*TARGET_HORIZONS, horizon) if h <= horizon})
    lines = [
        f"Evaluation window {report['eval']['start']} .. {report['eval']['end']} "
        f"(never used for training or tuning); static quantiles fitted on "
        f"{report['fit']['start']} .. {report['fit']['end']}.",
        "",
        "| series | h | origins | MAE model (bp) | MAE persistence (bp) | skill | "
        "dir. acc. (share) | coverage 10–90 | width (bp) | pinball model (bp) | "
        "pinball EWMA (bp) | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    entries = [*report["series"].items(), ("all (pooled, bp)", report["all"])]
    for name, entry in entries:
        c = entry["contenders"]
        for h in shown:
            m = c[model]["per_h"][h - 1] if h <= len(c[model]["per_h"]) else None
            if m is None:
                continue
            p = c["persistence"]["per_h"][h - 1]
            e = c["ewma_band"]["per_h"][h - 1]
            acc = m["dir_accuracy"]
            lines.append(
                f"| {name} | {h} | {entry['origins']} | {_num(m['mae_bps'])} | "
                f"{_num(p['mae_bps'])} | {_pct(m['skill'], 2)} | "
                f"{_pct(acc)} ({_pct(m['dir_share'], 0)}) | {_pct(m['coverage'])} | "
                f"{_num(m['width_bps'], 1)} | {_num(m['pinball_bps'], 3)} | "
                f"{_num(e['pinball_bps'], 3)} | {_num(m['pinball_ratio_ewma'], 3)} |"
            )
    lines += ["", "Baselines, mean over horizons 1..H (pooled, bp):", ""]
    lines += [
        "| contender | MAE (bp) | skill | coverage | width (bp) | pinball (bp) | ratio to EWMA |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in report["all"]["contenders"].items():
        mean = entry["mean"]
        lines.append(
            f"| {name} | {_num(mean['mae_bps'])} | {_pct(mean['skill'], 2)} | "
            f"{_pct(mean['coverage'])} | {_num(mean['width_bps'], 1)} | "
            f"{_num(mean['pinball_bps'], 3)} | {_num(mean['pinball_ratio_ewma'], 3)} |"
        )
    targets = report.get("targets", [])
    if targets:
        lines += [
            "",
            "Quality targets (skill >= 0, coverage 78–82 %, pinball <= 0.97 x EWMA):",
            "",
            "| series | h | skill | coverage | pinball ratio | met |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for t in targets:
            met = [k for k in ("skill_ok", "coverage_ok", "pinball_ok") if not t[k]]
            verdict = "yes" if not met else "no: " + ", ".join(k[:-3] for k in met)
            lines.append(
                f"| {t['series']} | {t['h']} | {_pct(t['skill'], 2)} | {_pct(t['coverage'])} | "
                f"{_num(t['pinball_ratio_ewma'], 3)} | {verdict} |"
            )
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
    keys = ("mae_bps", "skill", "coverage", "width_bps", "pinball_bps", "pinball_ratio_ewma")
    summary: dict[str, Any] = {
        "eval": report["eval"],
        "origins": report["all"]["origins"],
        "mean": {
            name: {k: entry["mean"].get(k) for k in keys}
            for name, entry in report["all"]["contenders"].items()
        },
        "per_series": {},
    }
    for name, entry in report["series"].items():
        summary["per_series"][name] = {
            f"h{h}": {k: entry["contenders"][model]["per_h"][h - 1].get(k) for k in keys}
            | {"ewma_pinball_bps": entry["contenders"]["ewma_band"]["per_h"][h - 1]["pinball_bps"]}
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
) -> Path:
    """Actual closes against the model's median and outer band (and the EWMA band), for
    forecasts made ``h`` bars before each plotted bar."""
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
    fig, axes = plt.subplots(len(horizons), 1, figsize=(11, 3.4 * len(horizons)), sharex=True)
    axes_list = np.atleast_1d(axes).tolist()
    for ax, h in zip(axes_list, horizons, strict=True):
        t_target = (d.open_time_ms[keep] + h * interval_ms).astype("datetime64[ms]")
        t_actual = (d.open_time_ms[keep] + interval_ms).astype("datetime64[ms]")
        pred = d.forecasts[model][keep, h - 1, :]
        ewma = d.forecasts["ewma_band"][keep, h - 1, :]
        ax.plot(t_actual, d.actual[keep, 0], color="black", lw=1.0, label="actual close")
        ax.plot(t_target, pred[:, med], color="tab:blue", lw=1.0, label="model median")
        ax.fill_between(
            t_target,
            pred[:, 0],
            pred[:, -1],
            color="tab:blue",
            alpha=0.25,
            label=f"model {levels[0]:g}-{levels[-1]:g} band",
        )
        ax.plot(t_target, ewma[:, 0], color="tab:orange", lw=0.7, ls="--", label="EWMA band")
        ax.plot(t_target, ewma[:, -1], color="tab:orange", lw=0.7, ls="--")
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
    levels = report["quantiles"]
    contenders = report["all"]["contenders"]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 4), sharey=True)
    for ax, h in zip(np.atleast_1d(axes).tolist(), shown, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        for name, style in ((model, "o-"), ("ewma_band", "s--"), ("static_quantiles", "^:")):
            rows = contenders.get(name, {}).get("per_h", [])
            if h <= len(rows) and rows[h - 1]["calibration"] is not None:
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
            report["quantiles"],
            interval_ms,
            model,
        ),
        plot_calibration(report, out_dir / "calibration.png", model),
    ]
    if report.get("history"):
        paths.append(plot_losses(report["history"], out_dir / "loss.png"))
    return paths
