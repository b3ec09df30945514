"""One training run, end to end: history in, a checked and scored artifact out.

import bundled files and pull Redis bars into the history store -> build series and time
splits -> fit with early stopping -> export ONNX -> parity check (no publish on failure) ->
score the exact artifact with onnxruntime against the baselines on the test split -> write
model.onnx, manifest.json, report.json/.md and plots -> optionally publish to a registry through
the promotion gate (scoring the current model on the same window).

Settings come from a TOML file, parsed once and validated: an unknown key or a bad value stops
the run with a message that names it.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.contracts import model as contract
from streamer.core.types import MINUTE_MS
from trainer.data import (
    HistoryStore,
    interval_label,
    list_redis_bar_keys,
    parse_interval,
    read_csv_bars,
    read_redis_bars,
    summarise_bad_rows,
)
from trainer.dataset import (
    Pool,
    Series,
    Split,
    fraction_splits,
    iso_ms,
    parse_iso_ms,
    time_splits,
    valid_origins,
    windows,
)
from trainer.evaluate import OnnxForecaster, evaluate, metrics_summary, plot_all, write_report
from trainer.export import attach_metadata, check_parity, export_onnx, make_version, model_spec
from trainer.model import ModelConfig, contract_defaults
from trainer.registry import (
    DEFAULT_KEEP,
    DirectoryRegistry,
    GateDecision,
    RedisRegistry,
    build_manifest,
    gate,
    gate_figures,
)
from trainer.train import FitResult, TrainSettings, fit

Log = Callable[[str], None]


class ConfigError(ValueError):
    """A bad training configuration; the message names the key."""


@dataclass(frozen=True, slots=True)
class ImportSpec:
    exchange: str
    symbol: str
    path: Path
    layout: str = "auto"


@dataclass(frozen=True, slots=True)
class DataConfig:
    store: Path
    symbols: tuple[tuple[str, str], ...]  # (exchange, symbol)
    interval_ms: int = MINUTE_MS
    imports: tuple[ImportSpec, ...] = ()
    start_ms: int | None = None
    end_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SplitConfig:
    """Explicit ``train_end``/``val_end``, or ``val_days``/``test_days`` back from the data's
    end (for scheduled retraining), or fractions of the span."""

    train_end_ms: int | None = None
    val_end_ms: int | None = None
    val_days: float | None = None
    test_days: float | None = None
    train_days: float | None = None
    train_fraction: float = 0.7
    val_fraction: float = 0.15


@dataclass(frozen=True, slots=True)
class ReportConfig:
    plot_series: str = ""
    plot_hours: float = 6.0
    plot_start_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RunConfig:
    data: DataConfig
    split: SplitConfig
    model: ModelConfig
    train: TrainSettings
    report: ReportConfig = field(default_factory=ReportConfig)
    source: str = ""


def _take(table: dict[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"[{where}] unknown key(s): {', '.join(unknown)}; known: {sorted(allowed)}"
        )
    return table


def _symbol(text: str) -> tuple[str, str]:
    exchange, _, symbol = text.partition(":")
    if not exchange or not symbol:
        raise ConfigError(f"data.symbols: {text!r} must be 'exchange:SYMBOL'")
    return exchange, symbol


def load_config(path: Path, store_override: Path | None = None) -> RunConfig:
    """Parse and validate a training TOML file; relative paths are relative to the file."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    base = path.parent
    _take(raw, {"data", "split", "model", "train", "report"}, "top level")
    try:
        d = _take(
            dict(raw.get("data", {})),
            {"store", "symbols", "interval", "import", "start", "end"},
            "data",
        )
        imports = []
        for i, item in enumerate(d.get("import", [])):
            _take(item, {"exchange", "symbol", "path", "layout"}, f"data.import[{i}]")
            imports.append(
                ImportSpec(
                    item["exchange"],
                    item["symbol"],
                    base / item["path"],
                    item.get("layout", "auto"),
                )
            )
        if not d.get("symbols"):
            raise ConfigError("data.symbols: list at least one 'exchange:SYMBOL'")
        store = store_override or base / d.get("store", "../../var/history")
        data = DataConfig(
            store=store,
            symbols=tuple(_symbol(s) for s in d["symbols"]),
            interval_ms=parse_interval(d.get("interval", "1m")),
            imports=tuple(imports),
            start_ms=parse_iso_ms(d["start"]) if "start" in d else None,
            end_ms=parse_iso_ms(d["end"]) if "end" in d else None,
        )
        s = _take(
            dict(raw.get("split", {})),
            {
                "train_end",
                "val_end",
                "val_days",
                "test_days",
                "train_days",
                "train_fraction",
                "val_fraction",
            },
            "split",
        )
        split = SplitConfig(
            train_end_ms=parse_iso_ms(s["train_end"]) if "train_end" in s else None,
            val_end_ms=parse_iso_ms(s["val_end"]) if "val_end" in s else None,
            val_days=s.get("val_days"),
            test_days=s.get("test_days"),
            train_days=s.get("train_days"),
            train_fraction=float(s.get("train_fraction", 0.7)),
            val_fraction=float(s.get("val_fraction", 0.15)),
        )
        if (split.train_end_ms is None) != (split.val_end_ms is None):
            raise ConfigError("split: give both train_end and val_end, or neither")
        if (split.val_days is None) != (split.test_days is None):
            raise ConfigError("split: give both val_days and test_days, or neither")
        m = _take(dict(raw.get("model", {})), {f.name for f in fields(ModelConfig)}, "model")
        m = contract_defaults(m)
        if "quantiles" in m:
            m["quantiles"] = tuple(float(q) for q in m["quantiles"])
        if "har_windows" in m:
            m["har_windows"] = tuple(int(n) for n in m["har_windows"])
        model = ModelConfig(**m)
        t = _take(dict(raw.get("train", {})), {f.name for f in fields(TrainSettings)}, "train")
        settings = TrainSettings(**t)
        r = _take(
            dict(raw.get("report", {})), {"plot_series", "plot_hours", "plot_start"}, "report"
        )
        report = ReportConfig(
            plot_series=r.get("plot_series", ""),
            plot_hours=float(r.get("plot_hours", 6.0)),
            plot_start_ms=parse_iso_ms(r["plot_start"]) if "plot_start" in r else None,
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return RunConfig(data, split, model, settings, report, str(path))


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    from importlib import metadata

    try:
        version = metadata.version("tickcast")
    except metadata.PackageNotFoundError:
        version = "unknown"
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "trainer"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"tickcast {version}"
    return f"tickcast {version} git {sha}{'+dirty' if dirty else ''}"


# --- stages ----------------------------------------------------------------------------------


def import_sources(
    store: HistoryStore, specs: tuple[ImportSpec, ...], interval_ms: int, log: Log
) -> None:
    for spec in specs:
        result = read_csv_bars(spec.path, spec.layout)
        if result.interval_ms != interval_ms:
            raise ConfigError(
                f"{spec.path}: bars are {interval_label(result.interval_ms)} apart, the run "
                f"trains on {interval_label(interval_ms)}"
            )
        added = store.append(spec.exchange, spec.symbol, interval_ms, result.bars, result.source)
        log(
            f"import {spec.path.name}: {len(result.bars)} bars, {added.added} new, "
            f"{len(result.bad_rows)} bad, {len(added.conflicts)} conflicts"
        )
        for line in summarise_bad_rows([*result.bad_rows, *added.conflicts], limit=5):
            log(f"  {line}")


def pull_redis(
    store: HistoryStore, url: str, symbols: tuple[tuple[str, str], ...] | None, log: Log
) -> int:
    """Append the streamer's Redis bar lists to the store; returns bars added."""
    total = 0
    keys = list_redis_bar_keys(url)
    for exchange, symbol in keys:
        if symbols is not None and (exchange, symbol) not in symbols:
            continue
        result = read_redis_bars(url, exchange, symbol)
        added = store.append(
            exchange, symbol, MINUTE_MS, result.bars, f"redis:{exchange}:{symbol}", replace=True
        )
        total += added.added
        log(
            f"redis {exchange}:{symbol}: {len(result.bars)} bars, {added.added} new, "
            f"{len(result.bad_rows)} bad, {len(added.conflicts)} conflicts"
        )
        for line in summarise_bad_rows([*result.bad_rows, *added.conflicts], limit=5):
            log(f"  {line}")
    return total


def load_series(store: HistoryStore, data: DataConfig) -> list[Series]:
    out = []
    for exchange, symbol in data.symbols:
        table = store.load(exchange, symbol, data.interval_ms)
        if data.start_ms is not None or data.end_ms is not None:
            table = table.between(data.start_ms or 0, data.end_ms or 2**62)
        if len(table) == 0:
            raise ConfigError(
                f"no {interval_label(data.interval_ms)} bars for {exchange}:{symbol} in "
                f"{store.root}; import or backfill them first"
            )
        out.append(Series.from_table(exchange, symbol, data.interval_ms, table))
    return out


def make_splits(series: list[Series], cfg: RunConfig) -> tuple[Split, Split, Split]:
    interval = cfg.data.interval_ms
    start = min(int(s.open_time_ms[0]) for s in series)
    end = max(int(s.open_time_ms[-1]) for s in series) + interval
    embargo = (cfg.model.window + cfg.model.horizon) * interval
    sp = cfg.split
    if sp.train_end_ms is not None and sp.val_end_ms is not None:
        return time_splits(start, end, sp.train_end_ms, sp.val_end_ms, embargo)
    if sp.val_days is not None and sp.test_days is not None:
        day = 86_400_000
        val_end = end - int(sp.test_days * day) - embargo
        train_end = val_end - int(sp.val_days * day) - embargo
        if sp.train_days is not None:
            start = max(start, train_end - int(sp.train_days * day))
        return time_splits(start, end, train_end, val_end, embargo)
    return fraction_splits(start, end, sp.train_fraction, sp.val_fraction, embargo)


def trained_metadata(
    series: list[Series],
    splits: tuple[Split, Split, Split],
    pools: dict[str, Pool],
    cfg: RunConfig,
    result: FitResult,
) -> dict[str, Any]:
    """``tickcast.trained``: when, on what (symbols, exchanges, time ranges, rows), how."""
    train = splits[0]
    per_series: dict[str, dict[str, Any]] = {}
    for s in series:
        in_train = (s.open_time_ms >= train.start_ms) & (s.open_time_ms < train.end_ms)
        per_series[s.name] = {
            "first": iso_ms(int(s.open_time_ms[0])),
            "last": iso_ms(int(s.open_time_ms[-1])),
            "rows": len(s),
            "train_rows": int(in_train.sum()),
        }
    return {
        "trained_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "symbols": sorted({s.symbol for s in series}),
        "exchanges": sorted({s.exchange for s in series}),
        "interval": interval_label(cfg.data.interval_ms),
        "series": per_series,
        "rows": int(sum(v["train_rows"] for v in per_series.values())),
        "splits": {sp.name: sp.describe() for sp in splits},
        "samples": {name: len(pool) for name, pool in pools.items()},
        "model": cfg.model.to_dict(),
        "train": cfg.train.to_dict(),
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "fit_seconds": round(result.seconds, 1),
    }


@dataclass
class RunOutcome:
    version: str
    model_bytes: bytes
    manifest: dict[str, Any]
    report: dict[str, Any]
    parity: dict[str, Any]
    decision: GateDecision | None
    published: bool
    files: list[Path]


def run_training(
    cfg: RunConfig,
    out_dir: Path | None = None,
    registry: DirectoryRegistry | RedisRegistry | None = None,
    redis_url: str | None = None,
    keep: int = DEFAULT_KEEP,
    log: Log = print,
) -> RunOutcome:
    store = HistoryStore(cfg.data.store)
    if cfg.data.imports:
        import_sources(store, cfg.data.imports, cfg.data.interval_ms, log)
    if redis_url:
        pull_redis(store, redis_url, None, log)
    series = load_series(store, cfg.data)
    splits = make_splits(series, cfg)
    w, h = cfg.model.window, cfg.model.horizon
    pools = {sp.name: Pool.build(series, w, h, sp) for sp in splits}
    for sp in splits:
        log(
            f"{sp.name}: {iso_ms(sp.start_ms)} .. {iso_ms(sp.end_ms)}, "
            f"{len(pools[sp.name])} origins"
        )
    result = fit(cfg.model, cfg.train, pools["train"], pools["val"], log)
    log(
        f"fit: best epoch {result.best_epoch}, val {result.best_val_loss:.4f} bp, "
        f"{result.stopped}, {result.seconds:.0f}s"
    )

    raw = export_onnx(result.model)
    parity_windows, parity_times = _parity_windows(series, w, h, splits)
    parity = check_parity(result.model, raw, parity_windows, bar_time_s=parity_times)
    log(f"parity: {json.dumps(parity['batches'])}")
    version = make_version(raw)
    trained = trained_metadata(series, splits, pools, cfg, result)
    spec = model_spec(cfg.model, version, trained, {}, cfg.data.interval_ms // 1000)
    servable = spec.interval_s == contract.INTERVAL_S
    scored = OnnxForecaster(attach_metadata(raw, spec), interval_s=spec.interval_s)
    models: dict[str, Any] = {"model": scored}
    current_version = registry.current_version() if registry is not None else None
    if registry is not None and current_version is not None and servable:
        # the registry serves 1-minute models only: one of them cannot be scored on other bars
        current_bytes, _ = registry.fetch(current_version)
        models["current"] = OnnxForecaster(current_bytes, interval_s=spec.interval_s)
    report, data = evaluate(models, series, splits[2], splits[0], history=result.history)
    report["version"] = version
    report["parity"] = parity
    metrics = metrics_summary(report) | {
        "parity": parity["batches"],
        "best_val_pinball_bps": result.best_val_loss,
    }
    model_bytes = attach_metadata(
        raw, model_spec(cfg.model, version, trained, metrics, spec.interval_s)
    )
    decision = None
    if registry is not None:
        figures = gate_figures(report, "model", "current" if "current" in models else None)
        decision = gate(figures)
        report["gate"] = decision.to_dict()
        log(f"gate: {decision.to_dict()['decision']}: " + "; ".join(decision.reasons))
    manifest = build_manifest(
        version,
        model_bytes,
        {
            "contract": cfg.model.contract,
            "window": w,
            "horizon": h,
            "quantiles": list(cfg.model.quantiles),
            "interval_s": spec.interval_s,
        },
        trained,
        metrics,
        code_version(),
        decision,
    )
    published = False
    if registry is not None and decision is not None:
        if not servable:
            log(
                "not published: contract 1 serves 1-minute models, this one is "
                + interval_label(cfg.data.interval_ms)
            )
        else:
            registry.publish(model_bytes, manifest, promote=decision.promote)
            published = True
            pruned = registry.prune(keep)
            log(
                f"published {version} as {'current' if decision.promote else 'candidate'}; "
                f"pruned {pruned or 'nothing'}"
            )
    files: list[Path] = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "model.onnx").write_bytes(model_bytes)
        (out_dir / "manifest.json").write_text(
            json.dumps(manifest, indent=1, sort_keys=True) + "\n"
        )
        files += [out_dir / "model.onnx", out_dir / "manifest.json"]
        files += write_report(report, out_dir)
        files += plot_all(
            report,
            data,
            out_dir,
            cfg.report.plot_series,
            cfg.report.plot_hours,
            cfg.report.plot_start_ms,
        )
        log(f"wrote {', '.join(str(f) for f in files)}")
    return RunOutcome(version, model_bytes, manifest, report, parity, decision, published, files)


def _parity_windows(
    series: list[Series], window: int, horizon: int, splits: tuple[Split, Split, Split]
) -> tuple[np.ndarray, np.ndarray]:
    """1000 real windows for the parity check, from the test split first, then earlier ones,
    and the open time (epoch seconds) of each one's last bar."""
    chunks, times = [], []
    for split in (splits[2], splits[1], splits[0]):
        for s in series:
            origins = valid_origins(s, window, horizon, split.start_ms, split.end_ms)
            if origins.shape[0]:
                step = max(1, origins.shape[0] // 400)
                chunks.append(windows(s, origins[::step], window))
                times.append(s.open_time_ms[origins[::step]] // 1000)
        if sum(c.shape[0] for c in chunks) >= 1000:
            break
    x = np.concatenate(chunks) if chunks else np.zeros((0, window, 5), np.float32)
    t = np.concatenate(times) if times else np.zeros(0, np.int64)
    if 0 < x.shape[0] < 1000:  # tiny data sets (tests, daily bars): repeat real windows
        x = np.concatenate([x] * (1000 // x.shape[0] + 1))
        t = np.concatenate([t] * (1000 // t.shape[0] + 1))
    return x[:1000], t[:1000].astype(np.int64)
