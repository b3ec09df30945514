"""MQTT topics and payloads of DESIGN.md section 3.2 (schema 1), in code.

Pure: the publisher shell only moves the bytes made here, and subscribers (tests, examples,
downstream tools) check what they receive with ``validate_forecast_payload``, so the encoder and
the checker of the fixed contract live side by side. A payload as encoded here, for the real
Kraken BTC/USDT bar of 2025-11-10 17:24 UTC (close 105351.1) and a persistence model with a
0.1 % band (tests/unit/test_payloads.py)::

    {"schema":1,"exchange":"kraken","symbol":"BTC-USDT","interval":"1m",
     "bar_time":"2025-11-10T17:24:00Z","issued_at":"2025-11-10T17:25:00.042Z",
     "last_close":105351.1,"horizons_min":[1,2,3],"median":[105351.1,105351.1,105351.1],
     "quantiles":{"0.1":[105216.08203024001,105160.15575600133,105117.24201644088],
                  "0.9":[105486.11796976,105542.04424399868,105584.95798355913]},
     "model":{"version":"20251111-1","trained_at":"2025-11-11T00:20:00Z"},"stale":false}

Floats are written in their shortest round-trip form: a subscriber parses back exactly the
values the model produced.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import msgspec

from streamer.core.contract import ContractError, quantile_key
from streamer.core.types import MINUTE_MS, Forecast

SCHEMA_VERSION = 1
INTERVAL = "1m"
MEDIAN_LEVEL = 0.5
STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"

FORECAST_FIELDS = (
    "schema",
    "exchange",
    "symbol",
    "interval",
    "bar_time",
    "issued_at",
    "last_close",
    "horizons_min",
    "median",
    "quantiles",
    "model",
    "stale",
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_ISO_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
_ISO_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class PayloadError(ValueError):
    """Bytes that are not a JSON object; the message says why."""


def forecast_topic(prefix: str, exchange: str, symbol: str) -> str:
    return f"{prefix}/forecast/{exchange}/{symbol}"


def skill_topic(prefix: str, exchange: str, symbol: str) -> str:
    return f"{prefix}/skill/{exchange}/{symbol}"


def status_topic(prefix: str, instance: str) -> str:
    """Retained liveness of one streamer: ``online`` on connect, ``offline`` as last will."""
    return f"{prefix}/status/{instance}"


@lru_cache(maxsize=4096)  # every forecast of a minute shares its bar and issue times
def iso_seconds(ts_ms: int) -> str:
    """``2023-03-16T22:15:00Z``: bar open times are whole minutes, so no fraction."""
    return datetime.fromtimestamp(ts_ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=4096)
def iso_millis(ts_ms: int) -> str:
    """``2023-03-16T22:16:00.042Z``: issue times are measured, so milliseconds matter."""
    whole = datetime.fromtimestamp(ts_ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{ts_ms % 1000:03d}Z"


@lru_cache(maxsize=64)
def _columns(levels: tuple[float, ...]) -> tuple[int, tuple[tuple[str, int], ...]]:
    """Where the median is in ``levels``, and the other levels' payload keys and positions in
    ascending order; raises ContractError when there is no median."""
    if MEDIAN_LEVEL not in levels:
        raise ContractError(f"forecast levels {levels} do not include 0.5")
    median_index = levels.index(MEDIAN_LEVEL)
    others = sorted((level, i) for i, level in enumerate(levels) if i != median_index)
    return median_index, tuple((quantile_key(level), i) for level, i in others)


def forecast_payload(f: Forecast) -> dict[str, Any]:
    """The schema-1 object of ``f``; raises ContractError when its levels lack the median."""
    median_index, others = _columns(f.quantile_levels)
    columns = tuple(zip(*f.values, strict=True)) or ((),) * len(f.quantile_levels)  # [q][h]
    return {
        "schema": SCHEMA_VERSION,
        "exchange": f.exchange,
        "symbol": f.symbol,
        "interval": INTERVAL,
        "bar_time": iso_seconds(f.bar_time_ms),
        "issued_at": iso_millis(f.issued_at_ms),
        "last_close": f.last_close,
        "horizons_min": list(range(1, f.horizon + 1)),
        "median": list(columns[median_index]),
        "quantiles": {key: list(columns[i]) for key, i in others},
        "model": {"version": f.model_version, "trained_at": f.model_trained_at},
        "stale": f.stale,
    }


def encode_forecast(f: Forecast) -> bytes:
    """UTF-8 JSON of ``f`` per DESIGN 3.2; floats in shortest round-trip form."""
    return _encoder.encode(forecast_payload(f))


def decode_forecast_payload(raw: bytes | str) -> dict[str, Any]:
    """Parse a received payload into a dict; raises PayloadError when it is not a JSON object."""
    try:
        obj = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"payload is not a JSON object: {type(obj).__name__}")
    return obj


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return _is_number(value) and math.isfinite(value)  # type: ignore[arg-type]


def _nonempty_str(obj: Mapping[str, Any], key: str) -> bool:
    value = obj.get(key)
    return isinstance(value, str) and value != ""


def _iso_ms(text: str) -> int:
    """Epoch ms of an ISO-8601 UTC string already matched by one of the regexes above."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _series_problems(name: str, series: object, horizon: int) -> list[str]:
    if not isinstance(series, list):
        return [f"{name} is not a list"]
    problems = []
    if len(series) != horizon:
        problems.append(f"{name} has {len(series)} values, expected {horizon}")
    bad = [i for i, v in enumerate(series) if not _is_finite_number(v)]
    if bad:
        problems.append(f"{name} has non-finite or non-numeric values at indexes {bad}")
    return problems


def validate_forecast_payload(obj: object) -> list[str]:
    """Every way ``obj`` breaks schema 1 of DESIGN 3.2, one line each; empty means valid."""
    if not isinstance(obj, dict):
        return [f"payload is a {type(obj).__name__}, expected an object"]
    problems: list[str] = []
    missing = [k for k in FORECAST_FIELDS if k not in obj]
    if missing:
        problems.append(f"missing fields: {', '.join(missing)}")
    unknown = sorted(str(k) for k in obj if k not in FORECAST_FIELDS)
    if unknown:
        problems.append(f"unknown fields: {', '.join(unknown)}")
    # A missing field is reported once, above; the checkers below read absent ones as valid.
    problems += _header_problems(obj)
    problems += _value_problems(obj)
    return problems


def _header_problems(obj: Mapping[str, Any]) -> list[str]:
    problems = []
    schema = obj.get("schema", SCHEMA_VERSION)
    if type(schema) is not int or schema != SCHEMA_VERSION:
        problems.append(f"schema is {schema!r}, expected {SCHEMA_VERSION}")
    for key in ("exchange", "symbol"):
        if key in obj and not _nonempty_str(obj, key):
            problems.append(f"{key} is {obj[key]!r}, expected a non-empty string")
    if obj.get("interval", INTERVAL) != INTERVAL:
        problems.append(f"interval is {obj['interval']!r}, expected {INTERVAL!r}")
    if "bar_time" in obj:
        bar_time = obj["bar_time"]
        if not isinstance(bar_time, str) or not _ISO_SECONDS.match(bar_time):
            problems.append(f"bar_time is {bar_time!r}, expected YYYY-MM-DDTHH:MM:SSZ")
        elif _iso_ms(bar_time) % MINUTE_MS:
            problems.append(f"bar_time {bar_time} is not the start of a minute")
    issued_at = obj.get("issued_at", "1970-01-01T00:00:00.000Z")
    if not isinstance(issued_at, str) or not _ISO_MILLIS.match(issued_at):
        problems.append(f"issued_at is {issued_at!r}, expected YYYY-MM-DDTHH:MM:SS.mmmZ")
    model = obj.get("model", {"version": "v", "trained_at": ""})
    if not isinstance(model, dict) or set(model) != {"version", "trained_at"}:
        problems.append(f"model is {model!r}, expected {{version, trained_at}}")
    else:
        if not _nonempty_str(model, "version"):
            problems.append(f"model.version is {model['version']!r}, expected non-empty")
        if not isinstance(model["trained_at"], str):
            problems.append(f"model.trained_at is {model['trained_at']!r}, expected a string")
    if not isinstance(obj.get("stale", False), bool):
        problems.append(f"stale is {obj['stale']!r}, expected true or false")
    return problems


def _value_problems(obj: Mapping[str, Any]) -> list[str]:
    problems = []
    last_close = obj.get("last_close", 1.0)
    if not (_is_finite_number(last_close) and last_close > 0):
        problems.append(f"last_close is {last_close!r}, expected a finite positive number")
    horizons = obj.get("horizons_min")
    horizon: int | None = None
    if (
        isinstance(horizons, list)
        and horizons
        and all(type(h) is int for h in horizons)
        and horizons == list(range(1, len(horizons) + 1))
    ):
        horizon = len(horizons)
    elif "horizons_min" in obj:
        problems.append(f"horizons_min is {horizons!r}, expected [1, 2, ..., H]")

    series: dict[float, list[Any]] = {}
    if "median" in obj and horizon is not None:
        found = _series_problems("median", obj["median"], horizon)
        problems += found
        if not found:
            series[MEDIAN_LEVEL] = obj["median"]
    quantiles = obj.get("quantiles", {})
    if not isinstance(quantiles, dict):
        problems.append(f"quantiles is {quantiles!r}, expected an object")
        quantiles = {}
    for key, values in quantiles.items():
        level = _level(key)
        if level is None:
            problems.append(f"quantile key {key!r} is not a level in (0, 1)")
        elif level == MEDIAN_LEVEL:
            problems.append("quantiles repeat the median level 0.5")
        elif horizon is not None:
            found = _series_problems(f"quantiles[{key}]", values, horizon)
            problems += found
            if not found:
                series[level] = values
    if horizon is not None:
        problems += _crossings(series, horizon)
    return problems


def _level(key: object) -> float | None:
    if not isinstance(key, str):
        return None
    try:
        level = float(key)
    except ValueError:
        return None
    if not (0.0 < level < 1.0) or quantile_key(level) != key:
        return None
    return level


def _crossings(series: Mapping[float, list[Any]], horizon: int) -> list[str]:
    """Quantiles must not decrease with the level; the median sits between its neighbours."""
    levels = sorted(series)
    problems = []
    for h in range(horizon):
        for lo, hi in itertools.pairwise(levels):
            if series[hi][h] < series[lo][h]:
                problems.append(
                    f"horizon {h + 1}: level {hi} ({series[hi][h]}) is below "
                    f"level {lo} ({series[lo][h]})"
                )
    return problems


def encode_skill(
    exchange: str,
    symbol: str,
    figures: Mapping[int, Mapping[str, float | int]],
    *,
    window_s: int,
    updated_at_ms: int,
) -> bytes:
    """Rolling online-evaluation figures per horizon (minutes), e.g. model_mae, skill, n.

    Figure names are the caller's; a figure that is not finite (skill with no samples yet) is
    written as ``null``, since JSON has no NaN.
    """
    horizons = {
        str(h): {
            name: (value if math.isfinite(value) else None) for name, value in figures[h].items()
        }
        for h in sorted(figures)
    }
    return _encoder.encode(
        {
            "schema": SCHEMA_VERSION,
            "exchange": exchange,
            "symbol": symbol,
            "window_s": window_s,
            "horizons": horizons,
            "updated_at": iso_millis(updated_at_ms),
        }
    )
