"""``tickcast-trainer``: import and backfill history, train, evaluate, and run the registry.

Heavy imports (torch, onnx, matplotlib) happen inside the commands that need them, so
``promote``, ``rollback`` and ``list`` start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.core.types import MINUTE_MS, floor_minute

if TYPE_CHECKING:
    from trainer.registry import Registry

DEFAULT_STORE = "var/history"
DEFAULT_REGISTRY = "var/registry"
EPILOG = (
    "Environment: TICKCAST_HISTORY (default store, else var/history), TICKCAST_REGISTRY "
    "(default registry: a directory, or redis://host:port/db, else var/registry)."
)


def _log(message: str) -> None:
    print(message, flush=True)


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        type=Path,
        default=Path(os.environ.get("TICKCAST_HISTORY", DEFAULT_STORE)),
        help="history store directory (Parquet per exchange/symbol/interval)",
    )


def _registry_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    default = os.environ.get("TICKCAST_REGISTRY", DEFAULT_REGISTRY)
    p.add_argument(
        "--registry",
        default=None if required else default,
        required=required,
        help=f"registry: a directory or redis://host:port/db (default {default})",
    )


def _symbols(text: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        exchange, _, symbol = item.strip().partition(":")
        if not exchange or not symbol:
            raise SystemExit(f"--symbols: {item!r} must be exchange:SYMBOL")
        out.append((exchange, symbol))
    return out


def _ms(text: str) -> int:
    from trainer.dataset import parse_iso_ms

    try:
        return parse_iso_ms(text)
    except ValueError:
        raise SystemExit(
            f"not an ISO date/time: {text!r} (e.g. 2023-04-24 or 2023-04-24T12:00Z)"
        ) from None


# --- commands ----------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    from trainer.data import (
        HistoryStore,
        ImportFailed,
        interval_label,
        parse_interval,
        read_csv_bars,
        summarise_bad_rows,
    )
    from trainer.pipeline import pull_redis

    store = HistoryStore(args.store)
    if args.from_redis:
        wanted = tuple(_symbols(args.symbols)) if args.symbols else None
        added = pull_redis(store, args.from_redis, wanted, _log)
        _log(f"{added} new bars from {args.from_redis} into {store.root}")
        return 0
    if not args.files or not args.exchange or not args.symbol:
        raise SystemExit("import: give FILE... with --exchange and --symbol, or --from-redis URL")
    bad_total = 0
    for path in args.files:
        try:
            result = read_csv_bars(
                path, args.layout, parse_interval(args.interval) if args.interval else None
            )
        except (ImportFailed, OSError) as exc:
            _log(f"{path}: cannot import: {exc}")
            return 2
        appended = store.append(
            args.exchange, args.symbol, result.interval_ms, result.bars, str(path)
        )
        bad = [*result.bad_rows, *appended.conflicts]
        bad_total += len(bad)
        _log(
            f"{path}: layout {result.layout}, interval {interval_label(result.interval_ms)}, "
            f"{len(result.bars)} good bars, {appended.added} new, {appended.unchanged} already "
            f"stored, {result.duplicates} exact duplicates, {len(bad)} bad rows; store now "
            f"{appended.rows} bars, {len(appended.gaps)} gaps"
        )
        for line in summarise_bad_rows(bad):
            _log(f"  {line}")
    return 1 if (bad_total and args.strict) else 0


def cmd_history(args: argparse.Namespace) -> int:
    from trainer.data import HistoryStore, interval_label
    from trainer.dataset import iso_ms

    infos = HistoryStore(args.store).datasets()
    if not infos:
        _log(f"{args.store}: empty")
    for info in infos:
        missing = sum(g.missing for g in info.gaps)
        _log(
            f"{info.exchange}:{info.symbol} {interval_label(info.interval_ms)}: {info.rows} bars "
            f"{iso_ms(info.first_open_time_ms)} .. {iso_ms(info.last_open_time_ms)}, "
            f"{len(info.gaps)} gaps ({missing} missing)"
        )
        for gap in info.gaps[: args.gaps]:
            _log(f"  gap at {iso_ms(gap.first_missing_ms)}: {gap.missing} missing")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from trainer.backfill import BackfillError, backfill
    from trainer.data import HistoryStore

    store = HistoryStore(args.store)
    end = _ms(args.end) if args.end else floor_minute(int(time.time() * 1000))
    start = _ms(args.start) if args.start else end - int(args.days * 86_400_000)
    for exchange, symbol in _symbols(args.symbols):
        try:
            result = backfill(store, args.rest_url, exchange, symbol, start, end, log=_log)
        except BackfillError as exc:
            _log(f"{exchange}:{symbol}: backfill failed: {exc}")
            return 2
        added = result.append.added if result.append else 0
        _log(
            f"{exchange}:{symbol}: {result.bars} bars in {result.pages} pages, {added} new, "
            f"{result.throttled} throttled, {result.retries} retries"
        )
    return 0


def _open_registry(target: str) -> Any:
    from trainer.registry import open_registry

    return open_registry(target)


def _train_once(args: argparse.Namespace) -> int:
    from trainer.pipeline import load_config, run_training

    cfg = load_config(args.config, store_override=args.store)
    registry = _open_registry(args.registry) if args.registry else None
    outcome = run_training(
        cfg,
        out_dir=args.out,
        registry=registry,
        redis_url=args.pull_redis,
        keep=args.keep,
        log=_log,
    )
    _log(f"version {outcome.version}; report:\n")
    from trainer.evaluate import markdown_table

    _log(markdown_table(outcome.report))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.export import ExportError
    from trainer.pipeline import ConfigError
    from trainer.registry import RegistryError

    try:
        return _train_once(args)
    except (ConfigError, ExportError, RegistryError) as exc:
        _log(f"train failed, nothing published: {exc}")
        return 2


def cmd_schedule(args: argparse.Namespace) -> int:
    from trainer.data import parse_interval
    from trainer.schedule import run_every, stop_on_signals

    every_s = parse_interval(args.every) / 1000
    stop = threading.Event()
    stop_on_signals(stop)

    def job() -> None:
        if _train_once(args) != 0:
            raise RuntimeError("training run failed")

    runs, failures = run_every(every_s, job, stop, args.runs, _log)
    _log(f"schedule stopped after {runs} runs ({failures} failed)")
    return 0 if failures == 0 else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from trainer.data import HistoryStore, read_csv_bars
    from trainer.dataset import Series, Split, iso_ms
    from trainer.evaluate import OnnxForecaster, evaluate, markdown_table, plot_all, write_report

    if not args.model and not args.version:
        raise SystemExit("evaluate: give --model PATH and/or --version V (with --registry)")
    series: list[Series] = []
    if args.csv:
        if not args.symbols or len(_symbols(args.symbols)) != 1:
            raise SystemExit("evaluate --csv FILE needs --symbols exchange:SYMBOL (one)")
        exchange, symbol = _symbols(args.symbols)[0]
        result = read_csv_bars(args.csv)
        series.append(Series.from_table(exchange, symbol, result.interval_ms, result.bars))
    else:
        if not args.symbols:
            raise SystemExit("evaluate: give --symbols exchange:SYMBOL,... (from --store)")
        store = HistoryStore(args.store)
        for exchange, symbol in _symbols(args.symbols):
            table = store.load(exchange, symbol, MINUTE_MS)
            if len(table) == 0:
                raise SystemExit(f"no bars for {exchange}:{symbol} in {args.store}")
            series.append(Series.from_table(exchange, symbol, MINUTE_MS, table))
    # each model is checked against the interval of the bars it is scored on
    interval_s = series[0].interval_ms // 1000
    models: dict[str, Any] = {}
    for i, path in enumerate(args.model or []):
        name = "model" if i == 0 else f"model{i + 1}"
        models[name] = OnnxForecaster.from_path(Path(path), interval_s=interval_s)
    if args.version:
        registry = _open_registry(args.registry)
        for version in args.version:
            data, _ = registry.fetch(version)
            models["model" if not models else version] = OnnxForecaster(data, interval_s=interval_s)
    first = min(int(s.open_time_ms[0]) for s in series)
    last = max(int(s.open_time_ms[-1]) for s in series) + MINUTE_MS
    end = _ms(args.end) if args.end else last
    start = _ms(args.start) if args.start else first + int((end - first) * 0.7)
    fit = Split("fit", _ms(args.fit_start) if args.fit_start else first, start)
    if fit.end_ms <= fit.start_ms:
        raise SystemExit(f"static quantiles need bars before --start {iso_ms(start)}")
    report, data = evaluate(models, series, Split("eval", start, end), fit)
    _log(markdown_table(report))
    if args.out:
        files = write_report(report, args.out)
        files += plot_all(report, data, args.out, args.plot_series or "", args.plot_hours)
        _log("wrote " + ", ".join(str(f) for f in files))
    return 0


def _change_registry(target: str, action: str, change: Callable[[Registry], str]) -> int:
    """An operator's change to the registry: prints what ``change`` says it did, or exits 2
    with the registry's reason for refusing it."""
    from trainer.registry import RegistryError

    registry = _open_registry(target)
    try:
        done = change(registry)
    except RegistryError as exc:
        _log(f"{action} failed: {exc}")
        return 2
    _log(done)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    def promote(registry: Registry) -> str:
        registry.promote(args.version, actor="operator")
        return f"current is now {args.version}"

    return _change_registry(args.registry, "promote", promote)


def cmd_rollback(args: argparse.Namespace) -> int:
    def rollback(registry: Registry) -> str:
        return f"rolled back; current is now {registry.rollback(actor='operator')}"

    return _change_registry(args.registry, "rollback", rollback)


def cmd_list(args: argparse.Namespace) -> int:
    registry = _open_registry(args.registry)
    current = registry.current_version()
    manifests = registry.list_versions()
    if args.json:
        print(json.dumps({"current": current, "versions": manifests}, indent=1, sort_keys=True))
        return 0
    if not manifests:
        _log(f"{args.registry}: no versions")
    for m in manifests:
        mean = (m.get("metrics") or {}).get("mean", {}).get("model", {})
        gate = m.get("gate") or {}
        pinball = mean.get("pinball_bps") or float("nan")
        ratio = mean.get("pinball_ratio_ewma") or float("nan")
        _log(
            f"{'*' if m['version'] == current else ' '} {m['version']}  {m['status']:<11} "
            f"created {m['created_at'][:19]}  pinball {pinball:.3f} bp  ratio {ratio:.3f}  "
            f"gate {gate.get('decision', '-')}"
        )
    return 0


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickcast-trainer",
        description="Train, evaluate and publish tickcast's quantile LSTM forecaster.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "import",
        help="import bars from CSV files or the streamer's Redis into the history store",
        description=(
            "Import bars. CSV layouts (auto-detected, or --layout): binance = data.binance.vision "
            "kline dumps, 12 columns, with or without header, ms or µs open times; yahoo = "
            "Date,Open,High,Low,Close[,Adj Close],Volume at any interval; simple = "
            "open_time_ms,open,high,low,close,volume. Bad rows are listed with file:line and "
            "never stored. --from-redis reads tickcast:bars:{exchange}:{symbol} lists."
        ),
        epilog=EPILOG,
    )
    p.add_argument("files", nargs="*", type=Path, help="CSV files (.csv or .csv.gz)")
    p.add_argument("--exchange", help="exchange name of the CSV bars, e.g. binance")
    p.add_argument("--symbol", help="canonical symbol of the CSV bars, e.g. BTCUSDT")
    p.add_argument("--layout", default="auto", choices=["auto", "binance", "yahoo", "simple"])
    p.add_argument("--interval", help="bar interval (1m, 1h, 1d); default: inferred")
    p.add_argument("--from-redis", metavar="URL", help="pull bar lists from this Redis instead")
    p.add_argument("--symbols", help="with --from-redis: only these exchange:SYMBOL,...")
    p.add_argument("--strict", action="store_true", help="exit 1 when any row was refused")
    _store_arg(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("history", help="list what the history store holds, with gaps")
    _store_arg(p)
    p.add_argument("--gaps", type=int, default=5, help="gaps to list per data set")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser(
        "backfill",
        help="fetch 1-minute bars from an exchange REST API (Binance /api/v3/klines)",
        description=(
            "Paginated REST backfill within the exchange's rate limits: requests are spaced, "
            "HTTP 429/418 answers are honoured by sleeping Retry-After."
        ),
    )
    p.add_argument("--symbols", required=True, help="exchange:SYMBOL,... e.g. binance:BTCUSDT")
    p.add_argument("--start", help="first minute (ISO, UTC); default: --days before --end")
    p.add_argument("--end", help="end (exclusive, ISO, UTC); default: the current minute")
    p.add_argument("--days", type=float, default=1.0, help="span when --start is not given")
    p.add_argument(
        "--rest-url",
        default="https://api.binance.com",
        help="REST base URL (the replay server's in tests)",
    )
    _store_arg(p)
    p.set_defaults(func=cmd_backfill)

    def train_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, required=True, help="training TOML file")
        p.add_argument("--out", type=Path, help="write model.onnx, manifest, report and plots here")
        p.add_argument(
            "--registry",
            default=os.environ.get("TICKCAST_REGISTRY"),
            help="publish through the promotion gate to this registry (dir or redis://)",
        )
        p.add_argument(
            "--pull-redis", metavar="URL", help="first pull the streamer's bars from Redis"
        )
        p.add_argument("--keep", type=int, default=10, help="versions the registry keeps")
        p.add_argument("--store", type=Path, default=None, help="override the config's store")

    p = sub.add_parser(
        "train",
        help="fit, evaluate, export (parity-checked) and optionally publish one model",
        description=(
            "One training run: import the config's files, pull Redis bars (--pull-redis), fit "
            "with early stopping, export ONNX (contract 1), check onnxruntime parity at batch "
            "1, 7 and 1000, score against the baselines on the test split, write the report "
            "and, with --registry, publish through the promotion gate."
        ),
        epilog=EPILOG,
    )
    train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "schedule",
        help="retrain in a loop (systemd without a timer)",
        description="Run `train` every --every (e.g. 6h); SIGTERM stops between runs.",
        epilog=EPILOG,
    )
    train_args(p)
    p.add_argument("--every", required=True, help="interval between run starts: 30m, 6h, 1d")
    p.add_argument("--runs", type=int, default=0, help="stop after this many runs (0: never)")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser(
        "evaluate",
        help="score any contract-1 or -2 ONNX model against the baselines on any bars",
        description=(
            "Score one or more ONNX models (contract 1 or 2) with onnxruntime against "
            "persistence, drift, the EWMA band, the HAR band and static quantiles on the same "
            "origins. The bands are scored at every level any model has; pinball ratios compare "
            "at the levels both sides have, and coverage is that of the 0.1-0.9 band. Bars come "
            "from the history store (--symbols) or one CSV (--csv). The evaluation window is "
            "--start..--end (default: the last 30 %); static quantiles and the HAR band are "
            "fitted before it."
        ),
        epilog=EPILOG,
    )
    p.add_argument("--model", action="append", help="ONNX file (repeat to compare models)")
    p.add_argument("--version", action="append", help="a registry version (with --registry)")
    _registry_arg(p)
    p.add_argument("--symbols", help="exchange:SYMBOL,... from the store (or the --csv's name)")
    p.add_argument("--csv", type=Path, help="score on this CSV instead of the store")
    p.add_argument("--start", help="evaluation start (ISO, UTC)")
    p.add_argument("--end", help="evaluation end, exclusive (ISO, UTC)")
    p.add_argument("--fit-start", help="first bar for the static quantiles (default: all before)")
    p.add_argument("--out", type=Path, help="write report.json, report.md and plots here")
    p.add_argument("--plot-series", help="exchange:SYMBOL for the forecast plot")
    p.add_argument("--plot-hours", type=float, default=6.0)
    _store_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("promote", help="make a version current (operator override of the gate)")
    p.add_argument("version")
    _registry_arg(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="go back to the previously promoted version")
    _registry_arg(p)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("list", help="list registry versions, newest first (* = current)")
    _registry_arg(p)
    p.add_argument("--json", action="store_true", help="print the manifests as JSON")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
