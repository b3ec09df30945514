"""MQTT topics and payloads (schema 1), in code: one msgspec Struct per JSON payload.

Each Struct is the single definition of its payload: the publisher encodes it, subscribers
(tests, examples, downstream tools) check what they receive against its field types with
``validate_forecast_payload`` / ``validate_skill_payload``, and ``json_schemas()`` derives the
JSON Schema that docs/contracts.md shows (a test keeps the two equal). What a JSON Schema cannot
say (horizons are 1..H, every series has H finite values, quantiles do not cross) is checked by
``validate_forecast_payload`` on top of the field types.

A payload as encoded here, for the real Kraken BTC/USDT bar of 2025-11-10 17:24 UTC (close
105351.1) and a persistence model with a 0.1 % band (tests/unit/test_payloads.py)::

    {"schema":1,"exchange":"kraken","symbol":"BTC-USDT","interval":"1m",
     "bar_time":"2025-11-10T17:24:00Z","issued_at":"2025-11-10T17:25:00.042Z",
     "last_close":105351.1,"horizons_min":[1,2,3],"median":[105351.1,105351.1,105351.1],
     "quantiles":{"0.1":[105216.08203024001,105160.15575600133,105117.24201644088],
                  "0.9":[105486.11796976,105542.04424399868,105584.95798355913]},
     "model":{"version":"20251111-1","trained_at":"2025-11-11T00:20:00Z"},"stale":false,
     "band":"raw"}

Floats are written in their shortest round-trip form: a subscriber parses back exactly the
values the model produced. Pure: the publisher shell only moves the bytes made here.

Schema 1 grows only by fields appended at the end, with a default a subscriber may assume when
the field is missing (a payload of an older streamer): ``band`` (which band the quantiles are:
the model's ``"raw"`` one or the online-``"calibrated"`` one) defaults to ``"raw"``, which is what
every streamer before it published. The fields before it keep their order and their bytes. A
change to an existing field would be schema 2.
"""

from __future__ import annotations

import itertools
import math
import typing
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from streamer.core.contracts.model import ContractError, quantile_key
from streamer.core.timefmt import iso_millis as iso_millis
from streamer.core.timefmt import iso_seconds as iso_seconds
from streamer.core.types import Forecast

SCHEMA_VERSION: Final = 1
INTERVAL: Final = "1m"
MEDIAN_LEVEL = 0.5
STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"

BAR_TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:00Z$"
MILLIS_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
# a level in (0, 1) as Python's repr writes it: 0.1, 0.05, 1e-05
LEVEL_PATTERN = r"^(0\.[0-9]+|[1-9](\.[0-9]+)?e-[0-9]+)$"

NonEmptyStr = Annotated[str, Meta(min_length=1)]
Series = list[float]  # one value per horizon, in horizon order
QuantileKey = Annotated[str, Meta(pattern=LEVEL_PATTERN)]
HorizonKey = Annotated[str, Meta(pattern=r"^[1-9][0-9]*$", description="horizon in minutes")]
Figure = float | int | None


class ModelRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """The model that made the forecast."""

    version: NonEmptyStr
    trained_at: Annotated[str, Meta(description='ISO-8601 UTC, "" when the model does not say')]


class ForecastPayload(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """A quantile forecast of the next H one-minute closes, published at each minute close."""

    schema: Literal[1]
    exchange: NonEmptyStr
    symbol: NonEmptyStr
    interval: Literal["1m"]
    bar_time: Annotated[
        str, Meta(pattern=BAR_TIME_PATTERN, description="open time of the last closed bar, UTC")
    ]
    issued_at: Annotated[
        str, Meta(pattern=MILLIS_PATTERN, description="when the forecast was made, UTC")
    ]
    last_close: Annotated[float, Meta(gt=0, description="close of the bar at bar_time")]
    horizons_min: Annotated[
        list[Annotated[int, Meta(ge=1)]],
        Meta(min_length=1, description="minutes after that bar's close: 1, 2, ..., H"),
    ]
    median: Annotated[Series, Meta(description="the 0.5 quantile, one value per horizon")]
    quantiles: Annotated[
        dict[QuantileKey, Series],
        Meta(description="the other levels, ascending: level -> one value per horizon"),
    ]
    model: ModelRef
    stale: Annotated[bool, Meta(description="the model is older than TICKCAST_MODEL_MAX_AGE_S")]
    band: Annotated[
        Literal["raw", "calibrated"],
        Meta(
            description='the quantiles are the model\'s own band ("raw") or the online '
            'calibration\'s ("calibrated"); "raw" when missing (an older streamer)'
        ),
    ] = "raw"


class SkillPayload(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """Rolling online-evaluation figures per horizon, over the last ``window_s`` seconds."""

    schema: Literal[1]
    exchange: NonEmptyStr
    symbol: NonEmptyStr
    window_s: Annotated[int, Meta(gt=0)]
    horizons: Annotated[
        dict[HorizonKey, dict[str, Figure]],
        Meta(description="figure name -> value, null when not finite (no samples yet)"),
    ]
    updated_at: Annotated[str, Meta(pattern=MILLIS_PATTERN)]


FORECAST_FIELDS = ForecastPayload.__struct_fields__
SKILL_FIELDS = SkillPayload.__struct_fields__

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class PayloadError(ValueError):
    """Bytes that are not a JSON object; the message says why."""


def forecast_topic(prefix: str, exchange: str, symbol: str) -> str:
    return f"{prefix}/forecast/{exchange}/{symbol}"


def skill_topic(prefix: str, exchange: str, symbol: str) -> str:
    return f"{prefix}/skill/{exchange}/{symbol}"


def status_topic(prefix: str, instance: str) -> str:
    """Retained liveness of one streamer: ``online`` on connect, ``offline`` as last will."""
    return f"{prefix}/status/{instance}"


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each JSON payload, by topic kind (docs/contracts.md shows them)."""
    return {
        "forecast": msgspec.json.schema(ForecastPayload),
        "skill": msgspec.json.schema(SkillPayload),
    }


# --- encoding --------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _columns(levels: tuple[float, ...]) -> tuple[int, tuple[tuple[str, int], ...]]:
    """Where the median is in ``levels``, and the other levels' payload keys and positions in
    ascending order; raises ContractError when there is no median."""
    if MEDIAN_LEVEL not in levels:
        raise ContractError(f"forecast levels {levels} do not include 0.5")
    median_index = levels.index(MEDIAN_LEVEL)
    others = sorted((level, i) for i, level in enumerate(levels) if i != median_index)
    return median_index, tuple((quantile_key(level), i) for level, i in others)


def to_payload(f: Forecast) -> ForecastPayload:
    """The schema-1 payload of ``f``; raises ContractError when its levels lack the median."""
    median_index, others = _columns(f.quantile_levels)
    columns = tuple(zip(*f.values, strict=True)) or ((),) * len(f.quantile_levels)  # [q][h]
    return ForecastPayload(
        SCHEMA_VERSION,
        f.exchange,
        f.symbol,
        INTERVAL,
        iso_seconds(f.bar_time_ms),
        iso_millis(f.issued_at_ms),
        f.last_close,
        list(range(1, f.horizon + 1)),
        list(columns[median_index]),
        {key: list(columns[i]) for key, i in others},
        ModelRef(f.model_version, f.model_trained_at),
        f.stale,
        f.band,
    )


def forecast_payload(f: Forecast) -> dict[str, Any]:
    """``to_payload(f)`` as plain JSON values: what a subscriber's ``json.loads`` gives."""
    result: dict[str, Any] = msgspec.to_builtins(to_payload(f))
    return result


def encode_forecast(f: Forecast) -> bytes:
    """UTF-8 JSON of ``f``'s payload; floats in shortest round-trip form."""
    return _encoder.encode(to_payload(f))


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
    horizons: dict[str, dict[str, Figure]] = {
        str(h): {
            name: (value if math.isfinite(value) else None) for name, value in figures[h].items()
        }
        for h in sorted(figures)
    }
    return _encoder.encode(
        SkillPayload(
            SCHEMA_VERSION, exchange, symbol, window_s, horizons, iso_millis(updated_at_ms)
        )
    )


# --- receiving -------------------------------------------------------------------------------


def decode_forecast_payload(raw: bytes | str) -> dict[str, Any]:
    """Parse a received payload into a dict; raises PayloadError when it is not a JSON object."""
    try:
        obj = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"payload is not a JSON object: {type(obj).__name__}")
    return obj


def validate_forecast_payload(obj: object) -> list[str]:
    """Every way ``obj`` breaks the forecast payload, one line each; empty means valid.

    First each field against its type in ``ForecastPayload``, then the rules across fields for
    the fields that passed.
    """
    if not isinstance(obj, dict):
        return [f"payload is a {type(obj).__name__}, expected an object"]
    problems, valid = _field_problems(obj, ForecastPayload)
    return problems + _forecast_rules(obj, valid)


def validate_skill_payload(obj: object) -> list[str]:
    """Every way ``obj`` breaks the skill payload, one line each; empty means valid."""
    if not isinstance(obj, dict):
        return [f"payload is a {type(obj).__name__}, expected an object"]
    problems, valid = _field_problems(obj, SkillPayload)
    if "updated_at" in valid:
        problems += _time_problems("updated_at", obj["updated_at"])
    return problems


def _convert_problem(where: str, value: object, type_: Any) -> str | None:
    """None when ``value`` has type ``type_``, else ``where`` (with the path inside it): why."""
    try:
        msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$")
        return f"{where}{path.rstrip('`')}: {message}"
    return None


def _field_problems(
    obj: dict[Any, Any], struct: type[msgspec.Struct]
) -> tuple[list[str], set[str]]:
    """Missing and unknown fields, and each present field checked against its declared type
    (an object field key by key, so that each bad entry is named); also the valid fields."""
    declared = msgspec.structs.fields(struct)
    fields = {f.encode_name: f.type for f in declared}
    problems = []
    missing = [f.encode_name for f in declared if f.required and f.encode_name not in obj]
    if missing:
        problems.append(f"missing fields: {', '.join(missing)}")
    unknown = sorted(str(k) for k in obj if k not in fields)
    if unknown:
        problems.append(f"unknown fields: {', '.join(unknown)}")
    valid = set()
    for name, type_ in fields.items():
        if name not in obj:
            continue
        found = _value_problems(name, obj[name], type_)
        problems += found
        if not found:
            valid.add(name)
    return problems, valid


def _value_problems(name: str, value: object, type_: Any) -> list[str]:
    inner = type_
    while typing.get_origin(inner) is Annotated:
        inner = typing.get_args(inner)[0]
    if typing.get_origin(inner) is not dict or not isinstance(value, dict):
        problem = _convert_problem(name, value, type_)
        return [] if problem is None else [problem]
    key_type, value_type = typing.get_args(inner)
    problems = []
    for key, item in value.items():
        problem = _convert_problem(f"{name} key {key!r}", key, key_type)
        if problem is not None:
            problems.append(problem)
        else:
            problems += _value_problems(f"{name}[{key}]", item, value_type)
    return problems


def _time_problems(name: str, text: str) -> list[str]:
    """A time that matched its pattern must also be a real date (no month 13)."""
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return [f"{name} {text!r} is not a valid time"]
    return []


def _forecast_rules(obj: dict[str, Any], valid: set[str]) -> list[str]:
    """The rules across fields that a JSON Schema cannot state, on fields that passed."""
    problems = []
    for name in ("bar_time", "issued_at"):
        if name in valid:
            problems += _time_problems(name, obj[name])
    if "last_close" in valid and not math.isfinite(obj["last_close"]):
        problems.append(f"last_close is {obj['last_close']!r}, expected a finite number")
    horizon: int | None = None
    if "horizons_min" in valid:
        horizons = obj["horizons_min"]
        if horizons == list(range(1, len(horizons) + 1)):
            horizon = len(horizons)
        else:
            problems.append(f"horizons_min is {horizons!r}, expected [1, 2, ..., H]")
    series: dict[float, list[float]] = {}
    if "median" in valid and horizon is not None:
        found = _series_problems("median", obj["median"], horizon)
        problems += found
        if not found:
            series[MEDIAN_LEVEL] = obj["median"]
    if "quantiles" in valid:
        for key, values in obj["quantiles"].items():
            level = float(key)
            if not 0.0 < level < 1.0 or quantile_key(level) != key:
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


def _series_problems(name: str, series: list[float], horizon: int) -> list[str]:
    problems = []
    if len(series) != horizon:
        problems.append(f"{name} has {len(series)} values, expected {horizon}")
    bad = [i for i, v in enumerate(series) if not math.isfinite(v)]
    if bad:
        problems.append(f"{name} has non-finite values at indexes {bad}")
    return problems


def _crossings(series: Mapping[float, list[float]], horizon: int) -> list[str]:
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
