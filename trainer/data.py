"""History store and importers: every bar the trainer learns from passes through here.

Bars are held as a ``BarTable`` (numpy arrays, int-ms open times, float64 OHLCV) and stored per
exchange, symbol and interval as Parquet under ``<root>/<exchange>/<symbol>/<interval>.parquet``
with a JSON sidecar (``<interval>.json``: rows, range, gaps, sources). The interval is a property
of the data set (``1m`` for exchange bars, ``1d`` for Yahoo daily exports), so daily data trains
with the same code.

Bad rows are never used and never silently dropped: each one becomes a ``BadRow`` naming the
file (or Redis key) and line, with a short reason label. Rows that repeat an open time with
identical values are harmless duplicates and are only counted.

The streamer's Redis bars are read through its own contract (``streamer.core.contracts.
redis_bars``): a bar still marked incomplete (its minute overlapped a feed outage and waits for
backfill) is never imported, and a complete bar from Redis replaces whatever the store holds for
its minute, so a partial bar cannot become permanent training data.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from streamer.core.contracts.redis_bars import (
    BARS_KEY_PREFIX,
    bars_key,
    decode_bar,
    incomplete_key,
    window_of_bars_key,
)
from streamer.core.timefmt import parse_iso_ms
from streamer.core.types import MINUTE_MS
from streamer.io.files import atomic_write_bytes

COLUMNS = ("open_time_ms", "open", "high", "low", "close", "volume")
LAYOUTS = ("auto", "binance", "yahoo", "simple")
# Binance spot dumps switched to microsecond open times in 2025; anything this large is not ms.
_MICROSECONDS_FROM = 10**14


@dataclass(frozen=True, slots=True)
class BadRow:
    """One unusable input row: where it is and why it was refused."""

    source: str
    line: int
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"{self.source}:{self.line}: {self.reason}{tail}"


@dataclass(frozen=True, slots=True)
class BarTable:
    """Bars sorted by open time, unique open times; ``line`` is the source line of each bar."""

    open_time_ms: npt.NDArray[np.int64]
    ohlcv: npt.NDArray[np.float64]  # [n, 5]: open, high, low, close, volume
    line: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.open_time_ms.shape[0])

    @staticmethod
    def empty() -> BarTable:
        return BarTable(
            np.zeros(0, dtype=np.int64), np.zeros((0, 5), dtype=np.float64), np.zeros(0, np.int64)
        )

    def between(self, start_ms: int, end_ms: int) -> BarTable:
        """Bars opening in ``[start_ms, end_ms)``."""
        keep = (self.open_time_ms >= start_ms) & (self.open_time_ms < end_ms)
        return BarTable(self.open_time_ms[keep], self.ohlcv[keep], self.line[keep])


@dataclass(frozen=True, slots=True)
class Gap:
    """``missing`` intervals are absent starting at ``first_missing_ms``."""

    first_missing_ms: int
    missing: int


@dataclass(frozen=True, slots=True)
class ImportResult:
    source: str
    layout: str
    bars: BarTable
    interval_ms: int
    bad_rows: tuple[BadRow, ...]
    duplicates: int  # rows repeating an earlier row exactly, dropped as harmless
    incomplete: int = 0  # Redis bars still marked incomplete, not imported


@dataclass(frozen=True, slots=True)
class AppendResult:
    added: int
    unchanged: int  # already stored with identical values
    conflicts: tuple[BadRow, ...]  # stored with different values: the stored bar is kept
    rows: int
    gaps: tuple[Gap, ...]
    replaced: int = 0  # stored with different values and replaced (``replace=True``)


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    exchange: str
    symbol: str
    interval_ms: int
    rows: int
    first_open_time_ms: int
    last_open_time_ms: int
    gaps: tuple[Gap, ...]
    sources: tuple[str, ...] = field(default=())


class ImportFailed(ValueError):
    """A file that cannot be imported at all (unknown layout, no rows)."""


def interval_label(interval_ms: int) -> str:
    """``60000`` -> ``1m``, ``86400000`` -> ``1d``: the interval part of store file names."""
    for unit_ms, unit in ((86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s")):
        if interval_ms % unit_ms == 0:
            return f"{interval_ms // unit_ms}{unit}"
    return f"{interval_ms}ms"


def parse_interval(text: str) -> int:
    """``1m`` / ``5m`` / ``1h`` / ``1d`` / ``6h`` -> milliseconds (also used for ``--every``)."""
    units = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    text = text.strip()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) <= 0:
        raise ValueError(f"interval {text!r}: expected a positive number and s/m/h/d, e.g. 1m, 6h")
    return int(text[:-1]) * units[text[-1]]


def find_gaps(open_time_ms: npt.NDArray[np.int64], interval_ms: int) -> tuple[Gap, ...]:
    if open_time_ms.shape[0] < 2:
        return ()
    steps = np.diff(open_time_ms)
    where = np.nonzero(steps > interval_ms)[0]
    return tuple(
        Gap(int(open_time_ms[i]) + interval_ms, int(steps[i] // interval_ms) - 1) for i in where
    )


def infer_interval(open_time_ms: npt.NDArray[np.int64]) -> int:
    """The most common step between consecutive bars; 1 minute when there is nothing to infer."""
    if open_time_ms.shape[0] < 2:
        return MINUTE_MS
    steps = np.diff(np.unique(open_time_ms))
    values, counts = np.unique(steps, return_counts=True)
    return int(values[np.argmax(counts)])


# --- row parsing -----------------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _is_header(cells: list[str]) -> bool:
    return any(c.strip() and not _looks_numeric(c) for c in cells[:2])


def _looks_numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _detect_layout(first: list[str]) -> str:
    names = [c.strip().lower() for c in first]
    if _is_header(first):
        if names and names[0] in ("date", "datetime", "timestamp") and "close" in names:
            return "yahoo"
        if names and names[0] == "open_time_ms":
            return "simple"
        if len(names) == 12:
            return "binance"
        raise ImportFailed(f"unknown CSV header {','.join(first)!r}")
    if len(names) == 12:
        return "binance"
    if len(names) == 6:
        return "simple"
    raise ImportFailed(f"cannot tell the layout of a headerless row with {len(names)} columns")


class _RowChecker:
    """Turns raw cells into a validated (open_time_ms, o, h, l, c, v) row or a BadRow."""

    def __init__(self, source: str) -> None:
        self.source = source

    def check(
        self, line: int, ts_ms: int, cells: list[str]
    ) -> tuple[int, float, float, float, float, float] | BadRow:
        text = ",".join(cells)
        try:
            o, h, lo, c, v = (float(x) for x in cells)
        except ValueError:
            return BadRow(self.source, line, "non_numeric", text)
        return self.check_values(line, ts_ms, (o, h, lo, c, v), text)

    def check_row(
        self,
        line: int,
        cells: list[str],
        count_ok: bool,
        parse_time: Callable[[str], int],
        at: Sequence[int],
    ) -> tuple[int, float, float, float, float, float] | BadRow:
        """One CSV row of either layout: its column count, its time (the first cell, read by
        ``parse_time``), then the open, high, low, close and volume in the cells ``at``."""
        if not count_ok:
            return BadRow(self.source, line, "wrong_column_count", f"{len(cells)} columns")
        try:
            ts = parse_time(cells[0])
        except ValueError:
            return BadRow(self.source, line, "bad_timestamp", cells[0])
        return self.check(line, ts, [cells[i] for i in at])

    def check_values(
        self, line: int, ts_ms: int, values: tuple[float, float, float, float, float], text: str
    ) -> tuple[int, float, float, float, float, float] | BadRow:
        """``values`` = (o, h, l, c, v) already numbers; ``text`` is the row for messages."""
        o, h, lo, c, v = values
        if not all(math.isfinite(x) for x in values):
            return BadRow(self.source, line, "non_finite", text)
        if min(o, h, lo, c) <= 0.0:
            return BadRow(self.source, line, "non_positive_price", text)
        if h < lo:
            return BadRow(self.source, line, "high_below_low", f"high={h} low={lo}")
        if not (lo <= o <= h and lo <= c <= h):
            return BadRow(self.source, line, "open_close_outside_range", text)
        if v < 0.0:
            return BadRow(self.source, line, "negative_volume", f"volume={v}")
        return (ts_ms, o, h, lo, c, v)


def _int_ms(text: str) -> int:
    value = int(text.strip())
    return value // 1000 if value >= _MICROSECONDS_FROM else value


def _rows_positional(
    rows: Iterator[tuple[int, list[str]]], check: _RowChecker, exact_columns: int | None
) -> Iterator[tuple[int, tuple[int, float, float, float, float, float] | BadRow]]:
    """Rows ``[time, open, high, low, close, volume, ...]``: exactly ``exact_columns`` cells
    (Binance's dumps have 12), or at least 6 when None."""
    for line, cells in rows:
        count_ok = len(cells) >= 6 if exact_columns is None else len(cells) == exact_columns
        yield line, check.check_row(line, cells, count_ok, _int_ms, range(1, 6))


def _rows_yahoo(
    header: list[str], rows: Iterator[tuple[int, list[str]]], check: _RowChecker
) -> Iterator[tuple[int, tuple[int, float, float, float, float, float] | BadRow]]:
    names = [c.strip().lower() for c in header]
    try:
        at = [names.index(n) for n in ("open", "high", "low", "close", "volume")]
    except ValueError:
        raise ImportFailed(
            f"Yahoo header {','.join(header)!r} lacks open/high/low/close/volume"
        ) from None
    for line, cells in rows:
        yield line, check.check_row(line, cells, len(cells) == len(names), parse_iso_ms, at)


def _numbered(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """Non-blank rows with the file line they end on (``csv`` counts embedded newlines)."""
    for cells in reader:
        if cells and any(c.strip() for c in cells):
            yield int(reader.line_num), cells


def rows_to_result(
    source: str,
    layout: str,
    parsed: Iterable[tuple[int, tuple[int, float, float, float, float, float] | BadRow]],
    interval_ms: int | None = None,
) -> ImportResult:
    """Collect checked rows: drop exact repeats, refuse conflicting repeats, sort by time."""
    bad: list[BadRow] = []
    by_time: dict[int, tuple[int, tuple[float, ...]]] = {}
    conflicted: dict[int, list[int]] = {}
    duplicates = 0
    for line, row in parsed:
        if isinstance(row, BadRow):
            bad.append(row)
            continue
        ts, values = row[0], row[1:]
        if ts in conflicted:
            conflicted[ts].append(line)
            continue
        seen = by_time.get(ts)
        if seen is None:
            by_time[ts] = (line, values)
        elif seen[1] == values:
            duplicates += 1
        else:
            del by_time[ts]
            conflicted[ts] = [seen[0], line]
    for ts, lines in conflicted.items():
        for line in lines:
            others = ", ".join(str(x) for x in lines if x != line)
            bad.append(
                BadRow(source, line, "duplicate_conflict", f"open_time_ms={ts} differs on {others}")
            )
    bad.sort(key=lambda b: b.line)
    times = np.array(sorted(by_time), dtype=np.int64)
    if times.shape[0]:
        lines_arr = np.array([by_time[int(t)][0] for t in times], dtype=np.int64)
        ohlcv = np.array([by_time[int(t)][1] for t in times], dtype=np.float64)
    else:
        lines_arr, ohlcv = np.zeros(0, np.int64), np.zeros((0, 5), np.float64)
    table = BarTable(times, ohlcv.reshape(-1, 5), lines_arr)
    return ImportResult(
        source=source,
        layout=layout,
        bars=table,
        interval_ms=interval_ms if interval_ms is not None else infer_interval(times),
        bad_rows=tuple(bad),
        duplicates=duplicates,
    )


def read_csv_bars(path: Path, layout: str = "auto", interval_ms: int | None = None) -> ImportResult:
    """Read one CSV (optionally .gz) of bars in any supported layout.

    Layouts: ``binance`` (data.binance.vision kline dumps, 12 columns, with or without header,
    ms or µs open times), ``yahoo`` (``Date,Open,High,Low,Close,Adj Close,Volume`` at any
    interval; ``Adj Close`` is ignored), ``simple`` (``open_time_ms,open,high,low,close,volume``).
    """
    if layout not in LAYOUTS:
        raise ImportFailed(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    source = str(path)
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        numbered = _numbered(reader)
        head = next(numbered, None)
        if head is None:
            raise ImportFailed(f"{source} has no rows")
        first_line, first = head
        detected = _detect_layout(first) if layout == "auto" else layout
        has_header = _is_header(first)
        if detected in ("binance", "simple") and first_line == 1:
            fast = _read_clean_numeric(path, detected, has_header, interval_ms)
            if fast is not None:
                return fast
        check = _RowChecker(source)
        rows = numbered if has_header else _chain_first(first_line, first, numbered)
        if detected == "binance":
            parsed = _rows_positional(rows, check, exact_columns=12)
        elif detected == "simple":
            parsed = _rows_positional(rows, check, exact_columns=None)
        else:
            if not has_header:
                raise ImportFailed(f"{source}: a Yahoo CSV needs its header row")
            parsed = _rows_yahoo(first, rows, check)
        return rows_to_result(source, detected, parsed, interval_ms)


def _read_clean_numeric(
    path: Path, layout: str, has_header: bool, interval_ms: int | None
) -> ImportResult | None:
    """Fast path for the common case, a clean numeric file: parsed by pyarrow and validated
    vectorised. Returns None at the first doubt (blank line, bad cell, a row that fails a
    check, a repeated open time), and the row-by-row reader then names every bad row."""
    import pyarrow.csv as pacsv

    width = 12 if layout == "binance" else 6
    names = [f"c{i}" for i in range(width)]
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if has_header else 0),
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(
                column_types={"c0": pa.int64()} | {f"c{i}": pa.float64() for i in range(1, 6)},
                include_columns=names[:6],
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if any(table.column(c).null_count for c in names[:6]):
        return None
    times = table.column("c0").to_numpy().astype(np.int64)
    times = np.where(times >= _MICROSECONDS_FROM, times // 1000, times)
    ohlcv = np.stack([table.column(c).to_numpy() for c in names[1:6]], axis=1).astype(np.float64)
    o, h, lo, c, v = ohlcv.T
    ok = (
        np.isfinite(ohlcv).all()
        and (ohlcv[:, :4] > 0).all()
        and (h >= lo).all()
        and ((lo <= o) & (o <= h) & (lo <= c) & (c <= h)).all()
        and (v >= 0).all()
    )
    if not ok or times.shape[0] == 0:
        return None
    order = np.argsort(times, kind="stable")
    times, ohlcv = times[order], ohlcv[order]
    if (np.diff(times) == 0).any():
        return None
    lines = order.astype(np.int64) + (2 if has_header else 1)
    return ImportResult(
        source=str(path),
        layout=layout,
        bars=BarTable(times, ohlcv, lines),
        interval_ms=interval_ms if interval_ms is not None else infer_interval(times),
        bad_rows=(),
        duplicates=0,
    )


def _chain_first(
    line: int, cells: list[str], rest: Iterator[tuple[int, list[str]]]
) -> Iterator[tuple[int, list[str]]]:
    yield line, cells
    yield from rest


def parse_redis_bars(
    source: str, elements: list[bytes], incomplete: Collection[int] = ()
) -> ImportResult:
    """Elements of a streamer bar list, decoded as the streamer decodes them; bars whose open
    time is in ``incomplete`` (the list's incomplete set) are left out and counted."""
    check = _RowChecker(source)
    skipped = 0

    def parsed() -> Iterator[tuple[int, tuple[int, float, float, float, float, float] | BadRow]]:
        nonlocal skipped
        for line, raw in enumerate(elements, start=1):
            try:
                bar = decode_bar("", "", raw)  # only the values are kept: no names needed
            except ValueError as exc:
                yield line, BadRow(source, line, "bad_bar", str(exc)[:200])
                continue
            if bar.open_time_ms in incomplete:
                skipped += 1
                continue
            values = (bar.open, bar.high, bar.low, bar.close, bar.volume)
            yield line, check.check_values(line, bar.open_time_ms, values, repr(raw[:80]))

    result = rows_to_result(source, "redis", parsed(), MINUTE_MS)
    return dataclasses.replace(result, incomplete=skipped)


def _redis(url: str) -> tuple[Any, bool]:
    """A blocking client for any Redis URL of ``streamer.core.redis_url``, and whether it is a
    cluster (whose bar keys carry the window as a hash tag)."""
    import redis

    from streamer.core.redis_url import RedisMode, parse_redis_url
    from streamer.io.redis_clients import sync_client

    target = parse_redis_url(url)
    if target.mode is RedisMode.SINGLE:
        return redis.Redis.from_url(url), False
    return sync_client(target), target.cluster


def read_redis_bars(url: str, exchange: str, symbol: str) -> ImportResult:
    """Read the streamer's rolling window of closed bars for one symbol, without the bars it
    still marks incomplete (list and marks read in one transaction: on a cluster both keys lie
    in one slot)."""
    client, cluster = _redis(url)
    try:
        key = bars_key(exchange, symbol, cluster)
        with client.pipeline(transaction=True) as pipe:
            pipe.lrange(key, 0, -1)
            pipe.zrange(incomplete_key(exchange, symbol, cluster), 0, -1)
            elements, marks = pipe.execute()
    finally:
        client.close()
    return parse_redis_bars(f"{url}/{key}", list(elements), {int(m) for m in marks})


def list_redis_bar_keys(url: str) -> list[tuple[str, str]]:
    """(exchange, symbol) of every bar list the streamer keeps in this Redis (on a cluster,
    every primary is scanned)."""
    client, cluster = _redis(url)
    try:
        keys = sorted(k.decode() for k in client.scan_iter(match=f"{BARS_KEY_PREFIX}*", count=1000))
    finally:
        client.close()
    windows = (window_of_bars_key(key, cluster) for key in keys)
    return [window for window in windows if window is not None]


# --- the store ---------------------------------------------------------------------------------


class HistoryStore:
    """Bars per exchange/symbol/interval as Parquet; appends are idempotent.

    A new bar with the same open time as a stored one and equal values is counted as unchanged.
    One with different values is reported as a conflict and the stored one kept (first writer
    wins, so a re-import of files can never silently rewrite history), except in an append with
    ``replace``: the streamer's complete Redis bars replace what is stored for their minute, so
    a bar stored from an outage's partial minute is corrected once the backfilled bar arrives.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, exchange: str, symbol: str, interval_ms: int) -> Path:
        return self.root / exchange / symbol / f"{interval_label(interval_ms)}.parquet"

    def load(self, exchange: str, symbol: str, interval_ms: int = MINUTE_MS) -> BarTable:
        path = self.path(exchange, symbol, interval_ms)
        if not path.exists():
            return BarTable.empty()
        table = pq.read_table(path)
        times = table.column("open_time_ms").to_numpy().astype(np.int64)
        ohlcv = np.stack(
            [table.column(c).to_numpy().astype(np.float64) for c in COLUMNS[1:]], axis=1
        )
        return BarTable(times, ohlcv, np.zeros(times.shape[0], dtype=np.int64))

    def info(self, exchange: str, symbol: str, interval_ms: int = MINUTE_MS) -> DatasetInfo | None:
        meta = self.path(exchange, symbol, interval_ms).with_suffix(".json")
        if not meta.exists():
            return None
        raw: dict[str, Any] = json.loads(meta.read_text())
        return DatasetInfo(
            exchange=raw["exchange"],
            symbol=raw["symbol"],
            interval_ms=int(raw["interval_ms"]),
            rows=int(raw["rows"]),
            first_open_time_ms=int(raw["first_open_time_ms"]),
            last_open_time_ms=int(raw["last_open_time_ms"]),
            gaps=tuple(Gap(int(a), int(b)) for a, b in raw["gaps"]),
            sources=tuple(raw.get("sources", ())),
        )

    def datasets(self) -> list[DatasetInfo]:
        out = []
        for meta in sorted(self.root.glob("*/*/*.json")):
            symbol_dir = meta.parent
            raw = json.loads(meta.read_text())
            info = self.info(symbol_dir.parent.name, symbol_dir.name, int(raw["interval_ms"]))
            if info is not None:
                out.append(info)
        return out

    def append(
        self,
        exchange: str,
        symbol: str,
        interval_ms: int,
        bars: BarTable,
        source: str,
        *,
        replace: bool = False,
    ) -> AppendResult:
        """Add ``bars``; with ``replace`` a bar whose minute is stored with other values replaces
        the stored one instead of being a conflict (the streamer's complete bars from Redis)."""
        stored = self.load(exchange, symbol, interval_ms)
        kept = stored.ohlcv
        conflicts: list[BadRow] = []
        replaced = 0
        if len(stored):
            pos = np.searchsorted(stored.open_time_ms, bars.open_time_ms)
            pos_c = np.minimum(pos, len(stored) - 1)
            present = stored.open_time_ms[pos_c] == bars.open_time_ms
            same = present & np.all(stored.ohlcv[pos_c] == bars.ohlcv, axis=1)
            differs = np.nonzero(present & ~same)[0]
            if replace:
                kept = stored.ohlcv.copy()
                kept[pos_c[differs]] = bars.ohlcv[differs]
                replaced = int(differs.shape[0])
            else:
                conflicts = [
                    BadRow(
                        source,
                        int(bars.line[i]),
                        "conflicts_with_store",
                        f"open_time_ms={int(bars.open_time_ms[i])} stored "
                        f"{stored.ohlcv[pos_c[i]].tolist()} new {bars.ohlcv[i].tolist()}",
                    )
                    for i in differs
                ]
            new = ~present
            unchanged = int(same.sum())
        else:
            new = np.ones(len(bars), dtype=bool)
            unchanged = 0
        added = int(new.sum())
        times = np.concatenate([stored.open_time_ms, bars.open_time_ms[new]])
        ohlcv = np.concatenate([kept, bars.ohlcv[new]])
        order = np.argsort(times, kind="stable")
        times, ohlcv = times[order], ohlcv[order]
        gaps = find_gaps(times, interval_ms)
        path = self.path(exchange, symbol, interval_ms)
        if added or replaced:
            table = pa.table(
                {"open_time_ms": pa.array(times, pa.int64())}
                | {c: pa.array(ohlcv[:, i], pa.float64()) for i, c in enumerate(COLUMNS[1:])}
            )
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            atomic_write_bytes(path, sink.getvalue().to_pybytes())
        previous = self.info(exchange, symbol, interval_ms)
        sources = list(previous.sources) if previous else []
        if source not in sources:
            sources.append(source)
        if len(times):
            meta = {
                "exchange": exchange,
                "symbol": symbol,
                "interval": interval_label(interval_ms),
                "interval_ms": interval_ms,
                "rows": int(times.shape[0]),
                "first_open_time_ms": int(times[0]),
                "last_open_time_ms": int(times[-1]),
                "gaps": [[g.first_missing_ms, g.missing] for g in gaps],
                "sources": sources[-50:],
            }
            atomic_write_bytes(
                path.with_suffix(".json"), (json.dumps(meta, indent=1) + "\n").encode()
            )
        return AppendResult(added, unchanged, tuple(conflicts), int(times.shape[0]), gaps, replaced)


def summarise_bad_rows(bad: Iterable[BadRow], limit: int = 20) -> list[str]:
    """Counts per reason and the first ``limit`` rows, for the CLI's report."""
    rows = list(bad)
    counts = Counter(b.reason for b in rows)
    lines = [f"{n} bad rows: {reason}" for reason, n in sorted(counts.items())]
    lines += [f"  {b}" for b in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} more")
    return lines
