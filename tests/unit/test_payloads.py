"""MQTT payloads (docs/contracts.md): exact encoding, the Structs, their JSON Schema, and a
validator that catches each kind of fault.

The last closes come from real Kraken BTC/USDT 1-minute bars (tests/fixtures/kraken, see its
SOURCE.md); the forecast values around them are made by the persistence-plus-band rule of
tests/fixtures/models.py, which is what a forecast is, not a price series.

tests/fixtures/mqtt/payloads_schema1.jsonl holds the bytes the hand-written dict encoder wrote
before the payloads became msgspec Structs (83 cases: 60 random band forecasts over 7 level sets
and horizons 1..60, odd floats, NaN and infinities, escapes, non-ASCII names, an empty horizon,
and 20 skill payloads); the Structs must write exactly the same bytes, but for the one field
schema 1 gained since, ``band``, appended last: every field the fixture holds keeps its order
and its bytes, and the fixture's forecasts (made before calibration existed) say ``"raw"``.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.core.contracts.model import ContractError
from streamer.core.contracts.mqtt import (
    FORECAST_FIELDS,
    ForecastPayload,
    PayloadError,
    SkillPayload,
    decode_forecast_payload,
    encode_forecast,
    encode_skill,
    forecast_payload,
    forecast_topic,
    json_schemas,
    skill_topic,
    status_topic,
    to_payload,
    validate_forecast_payload,
    validate_skill_payload,
)
from streamer.core.timefmt import iso_millis, iso_seconds
from streamer.core.types import MINUTE_MS, Forecast

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BARS_CSV = FIXTURES / "kraken" / "XBTUSDT_1m_20251110_1723-20251111_0016.csv"
GOLDEN = FIXTURES / "mqtt" / "payloads_schema1.jsonl"


def real_bars() -> list[tuple[int, float]]:
    with BARS_CSV.open() as f:
        return [(int(row["open_time_ms"]), float(row["close"])) for row in csv.DictReader(f)]


BARS = real_bars()


def band_forecast(
    bar_time_ms: int,
    last_close: float,
    levels: tuple[float, ...] = (0.1, 0.5, 0.9),
    horizon: int = 3,
    band: float = 0.001,
    issued_after_ms: int = 42,
) -> Forecast:
    z = {
        0.05: -1.645,
        0.1: -1.2816,
        0.25: -0.6745,
        0.5: 0.0,
        0.75: 0.6745,
        0.9: 1.2816,
        0.95: 1.645,
    }
    values = tuple(
        tuple(last_close * (1 + z[q] * band * math.sqrt(h)) for q in levels)
        for h in range(1, horizon + 1)
    )
    return Forecast(
        exchange="kraken",
        symbol="BTC-USDT",
        bar_time_ms=bar_time_ms,
        last_close=last_close,
        quantile_levels=levels,
        values=values,
        model_version="20251111-1",
        model_trained_at="2025-11-11T00:20:00Z",
        stale=False,
        issued_at_ms=bar_time_ms + MINUTE_MS + issued_after_ms,
    )


def test_topics() -> None:
    assert forecast_topic("tickcast", "binance", "BTCUSDT") == "tickcast/forecast/binance/BTCUSDT"
    assert skill_topic("tc", "coinbase", "BTC-USD") == "tc/skill/coinbase/BTC-USD"
    assert status_topic("tickcast", "eu-1") == "tickcast/status/eu-1"


def test_forecast_payload_is_exactly_the_schema_1_object() -> None:
    bar_time_ms, close = BARS[1]  # 2025-11-10 17:24 UTC, close 105351.1
    f = band_forecast(bar_time_ms, close)
    raw = encode_forecast(f)
    assert isinstance(raw, bytes)
    raw.decode("utf-8")
    assert json.loads(raw) == {
        "schema": 1,
        "exchange": "kraken",
        "symbol": "BTC-USDT",
        "interval": "1m",
        "bar_time": "2025-11-10T17:24:00Z",
        "issued_at": "2025-11-10T17:25:00.042Z",
        "last_close": 105351.1,
        "horizons_min": [1, 2, 3],
        "median": [f.values[0][1], f.values[1][1], f.values[2][1]],
        "quantiles": {
            "0.1": [f.values[0][0], f.values[1][0], f.values[2][0]],
            "0.9": [f.values[0][2], f.values[1][2], f.values[2][2]],
        },
        "model": {"version": "20251111-1", "trained_at": "2025-11-11T00:20:00Z"},
        "stale": False,
        "band": "raw",
    }
    # the documented key order, for human readers of raw payloads
    assert list(json.loads(raw)) == [
        "schema", "exchange", "symbol", "interval", "bar_time", "issued_at", "last_close",
        "horizons_min", "median", "quantiles", "model", "stale", "band",
    ]  # fmt: skip


def test_a_calibrated_forecast_says_so_and_changes_no_other_byte() -> None:
    bar_time_ms, close = BARS[1]
    raw = band_forecast(bar_time_ms, close)
    calibrated = msgspec.structs.replace(raw, band="calibrated")
    raw_bytes, calibrated_bytes = encode_forecast(raw), encode_forecast(calibrated)
    assert raw_bytes.endswith(b',"stale":false,"band":"raw"}')
    assert calibrated_bytes == raw_bytes.removesuffix(b'"raw"}') + b'"calibrated"}'
    obj = decode_forecast_payload(calibrated_bytes)
    assert obj["band"] == "calibrated"
    assert validate_forecast_payload(obj) == []


def test_a_payload_of_an_older_streamer_without_band_is_valid_and_reads_as_raw() -> None:
    obj = _valid()
    del obj["band"]
    assert validate_forecast_payload(obj) == []
    jsonschema.validate(obj, json_schemas()["forecast"])
    assert msgspec.convert(obj, ForecastPayload).band == "raw"


def test_five_levels_keep_level_order_and_the_median_apart() -> None:
    bar_time_ms, close = BARS[10]
    levels = (0.05, 0.25, 0.5, 0.75, 0.95)
    f = band_forecast(bar_time_ms, close, levels=levels, horizon=2)
    obj = decode_forecast_payload(encode_forecast(f))
    assert list(obj["quantiles"]) == ["0.05", "0.25", "0.75", "0.95"]
    assert obj["median"] == [close, close]  # z(0.5) = 0: the band model's median is the close
    assert obj["quantiles"]["0.95"] == [f.values[0][4], f.values[1][4]]
    assert validate_forecast_payload(obj) == []


def test_stale_flag_and_ms_formatting() -> None:
    bar_time_ms, close = BARS[0]
    f = band_forecast(bar_time_ms, close, issued_after_ms=5)
    stale = Forecast(**{**{k: getattr(f, k) for k in f.__struct_fields__}, "stale": True})
    obj = decode_forecast_payload(encode_forecast(stale))
    assert obj["stale"] is True
    assert obj["issued_at"] == "2025-11-10T17:24:00.005Z"
    assert obj["bar_time"] == "2025-11-10T17:23:00Z"
    assert iso_seconds(0) == "1970-01-01T00:00:00Z"
    assert iso_millis(999) == "1970-01-01T00:00:00.999Z"


def test_forecast_without_median_level_is_refused() -> None:
    bar_time_ms, close = BARS[0]
    f = band_forecast(bar_time_ms, close, levels=(0.1, 0.9))
    with pytest.raises(ContractError, match=r"0\.5"):
        encode_forecast(f)


@given(
    index=st.integers(0, len(BARS) - 1),
    horizon=st.integers(1, 30),
    band=st.floats(0.0, 0.05),
    levels=st.sampled_from([(0.5,), (0.1, 0.5, 0.9), (0.05, 0.25, 0.5, 0.75, 0.95)]),
)
def test_every_conforming_forecast_encodes_to_a_valid_payload_that_round_trips(
    index: int, horizon: int, band: float, levels: tuple[float, ...]
) -> None:
    bar_time_ms, close = BARS[index]
    f = band_forecast(bar_time_ms, close, levels=levels, horizon=horizon, band=band)
    obj = decode_forecast_payload(encode_forecast(f))
    assert validate_forecast_payload(obj) == []
    median = levels.index(0.5)
    assert obj["median"] == [row[median] for row in f.values]  # floats round-trip exactly
    for q, level in enumerate(levels):
        if level != 0.5:
            assert obj["quantiles"][repr(level)] == [row[q] for row in f.values]


def _valid() -> dict[str, Any]:
    bar_time_ms, close = BARS[1]
    return decode_forecast_payload(encode_forecast(band_forecast(bar_time_ms, close)))


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        obj[key] = value

    return mutate


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        del obj[key]

    return mutate


def _lower_above_median_at_horizon_2(obj: dict[str, Any]) -> None:
    obj["quantiles"]["0.1"][1] = obj["median"][1] + 0.5


def _median_above_upper(obj: dict[str, Any]) -> None:
    obj["median"][0] = obj["quantiles"]["0.9"][0] + 1.0


def _nan_in_median(obj: dict[str, Any]) -> None:
    obj["median"][2] = math.nan  # json.loads of a NaN token gives this


# (name, mutation, expected problem, refused by the Struct's types alone): the others break a
# rule across fields that no JSON Schema can state.
MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str, bool]] = [
    ("missing field", _delete("model"), "missing fields: model", True),
    ("unknown field", _set("price", 1.0), "unknown fields: price", True),
    ("wrong schema", _set("schema", 2), "schema: Invalid enum value 2", True),
    ("schema as bool", _set("schema", True), "schema: Expected `int`, got `bool`", True),
    ("empty symbol", _set("symbol", ""), "symbol: Expected `str` of length >= 1", True),
    ("exchange not str", _set("exchange", 3), "exchange: Expected `str`, got `int`", True),
    ("wrong interval", _set("interval", "5m"), "interval: Invalid enum value '5m'", True),
    (
        "bar_time with ms",
        _set("bar_time", "2025-11-10T17:24:00.000Z"),
        "bar_time: Expected `str` matching",
        True,
    ),
    (
        "bar_time mid-minute",
        _set("bar_time", "2025-11-10T17:24:30Z"),
        "bar_time: Expected `str` matching",
        True,
    ),
    (
        "bar_time as ms int",
        _set("bar_time", 1762795440000),
        "bar_time: Expected `str`, got `int`",
        True,
    ),
    (
        "bar_time month 13",
        _set("bar_time", "2025-13-10T17:24:00Z"),
        "bar_time '2025-13-10T17:24:00Z' is not a valid time",
        False,
    ),
    (
        "issued_at no ms",
        _set("issued_at", "2025-11-10T17:25:00Z"),
        "issued_at: Expected `str` matching",
        True,
    ),
    (
        "issued_at local",
        _set("issued_at", "2025-11-10T18:25:00.042+01:00"),
        "issued_at: Expected `str` matching",
        True,
    ),
    ("last_close zero", _set("last_close", 0), "last_close: Expected `float` > 0.0", True),
    (
        "last_close string",
        _set("last_close", "105351.1"),
        "last_close: Expected `float`, got `str`",
        True,
    ),
    (
        "last_close inf",
        _set("last_close", math.inf),
        "last_close is inf, expected a finite number",
        False,
    ),
    (
        "horizons not 1..H",
        _set("horizons_min", [1, 5, 15]),
        "horizons_min is [1, 5, 15], expected [1, 2, ..., H]",
        False,
    ),
    (
        "horizons empty",
        _set("horizons_min", []),
        "horizons_min: Expected `array` of length >= 1",
        True,
    ),
    ("horizon zero", _set("horizons_min", [0, 1, 2]), "horizons_min[0]: Expected `int` >= 1", True),
    ("median short", lambda o: o["median"].pop(), "median has 2 values, expected 3", False),
    (
        "median null",
        lambda o: o["median"].__setitem__(2, None),
        "median[2]: Expected `float`, got `null`",
        True,
    ),
    ("median NaN", _nan_in_median, "median has non-finite values at indexes [2]", False),
    (
        "quantile long",
        lambda o: o["quantiles"]["0.9"].append(1.0),
        "quantiles[0.9] has 4 values, expected 3",
        False,
    ),
    (
        "quantile bool",
        lambda o: o["quantiles"]["0.1"].__setitem__(0, True),
        "quantiles[0.1][0]: Expected `float`, got `bool`",
        True,
    ),
    (
        "quantile key",
        lambda o: o["quantiles"].__setitem__("p90", [1.0] * 3),
        "quantiles key 'p90': Expected `str` matching",
        True,
    ),
    (
        "quantile key 1.5",
        lambda o: o["quantiles"].__setitem__("1.5", [1.0] * 3),
        "quantiles key '1.5': Expected `str` matching",
        True,
    ),
    (
        "quantile key 0.90",
        lambda o: o["quantiles"].__setitem__("0.90", [1e6] * 3),
        "quantile key '0.90' is not a level in (0, 1)",
        False,
    ),
    (
        "median repeated",
        lambda o: o["quantiles"].__setitem__("0.5", o["median"]),
        "quantiles repeat the median level 0.5",
        False,
    ),
    (
        "quantiles list",
        _set("quantiles", [[1.0]]),
        "quantiles: Expected `object`, got `array`",
        True,
    ),
    ("crossing", _lower_above_median_at_horizon_2, "horizon 2: level 0.5", False),
    ("median outside", _median_above_upper, "horizon 1: level 0.9", False),
    (
        "model fields",
        _set("model", {"version": "x"}),
        "model: Object missing required field `trained_at`",
        True,
    ),
    (
        "model version",
        _set("model", {"version": "", "trained_at": ""}),
        "model.version: Expected `str` of length >= 1",
        True,
    ),
    (
        "trained_at",
        _set("model", {"version": "v", "trained_at": None}),
        "model.trained_at: Expected `str`, got `null`",
        True,
    ),
    (
        "model extra",
        _set("model", {"version": "v", "trained_at": "", "x": 1}),
        "model: Object contains unknown field `x`",
        True,
    ),
    ("stale as int", _set("stale", 0), "stale: Expected `bool`, got `int`", True),
    ("band unknown", _set("band", "wide"), "band: Invalid enum value 'wide'", True),
    ("band as bool", _set("band", True), "band: Expected `str`, got `bool`", True),
]


def test_valid_payload_has_no_problems() -> None:
    assert validate_forecast_payload(_valid()) == []


@pytest.mark.parametrize(
    ("mutate", "expected", "by_type"),
    [(m, e, t) for _, m, e, t in MUTATIONS],
    ids=[n for n, _, _, _ in MUTATIONS],
)
def test_validator_names_each_kind_of_problem(
    mutate: Callable[[dict[str, Any]], None], expected: str, by_type: bool
) -> None:
    obj = copy.deepcopy(_valid())
    mutate(obj)
    problems = validate_forecast_payload(obj)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems
    # the same definition refuses it: the Struct's types alone catch exactly the type problems
    if by_type:
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(obj, ForecastPayload)
    else:
        msgspec.convert(obj, ForecastPayload)


@pytest.mark.parametrize(
    ("mutate", "by_type"), [(m, t) for _, m, _, t in MUTATIONS], ids=[n for n, _, _, _ in MUTATIONS]
)
def test_the_published_json_schema_refuses_exactly_the_type_problems(
    mutate: Callable[[dict[str, Any]], None], by_type: bool
) -> None:

    schema = json_schemas()["forecast"]
    jsonschema.validate(_valid(), schema)
    obj = copy.deepcopy(_valid())
    mutate(obj)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(obj))
    assert bool(errors) == by_type, errors


def test_validator_reports_several_problems_at_once_and_non_objects() -> None:
    obj = _valid()
    obj["schema"] = 0
    obj["stale"] = "no"
    del obj["symbol"]
    assert len(validate_forecast_payload(obj)) == 3
    assert validate_forecast_payload([1, 2]) == ["payload is a list, expected an object"]


def test_swapped_outer_levels_cross_the_median_on_both_sides() -> None:
    obj = _valid()
    q = obj["quantiles"]
    q["0.1"][1], q["0.9"][1] = q["0.9"][1], q["0.1"][1]
    assert [p.split(" (")[0] for p in validate_forecast_payload(obj)] == [
        "horizon 2: level 0.5",
        "horizon 2: level 0.9",
    ]


def test_decode_refuses_non_json_and_non_objects() -> None:
    with pytest.raises(PayloadError, match="not valid JSON"):
        decode_forecast_payload(b"online")
    with pytest.raises(PayloadError, match="not a JSON object"):
        decode_forecast_payload(b"[1, 2]")
    assert decode_forecast_payload('{"a": 1}') == {"a": 1}


def test_skill_payload_exact_with_numeric_horizon_order_and_nan_as_null() -> None:
    figures: dict[int, dict[str, float | int]] = {
        15: {"model_mae": 41.5, "persistence_mae": 40.0, "skill": -0.0375, "coverage": 0.8,
             "pinball": 12.25, "n": 120},
        1: {"model_mae": 9.5, "persistence_mae": 10.0, "skill": 0.05, "coverage": 0.79,
            "pinball": 3.5, "n": 1380},
        5: {"model_mae": math.nan, "persistence_mae": 0.0, "skill": math.inf, "coverage": 1.0,
            "pinball": 0.0, "n": 0},
    }  # fmt: skip
    raw = encode_skill("binance", "BTCUSDT", figures, window_s=86_400, updated_at_ms=BARS[0][0])
    obj = json.loads(raw)
    assert obj == {
        "schema": 1,
        "exchange": "binance",
        "symbol": "BTCUSDT",
        "window_s": 86_400,
        "horizons": {
            "1": figures[1],
            "5": {"model_mae": None, "persistence_mae": 0.0, "skill": None, "coverage": 1.0,
                  "pinball": 0.0, "n": 0},
            "15": figures[15],
        },
        "updated_at": "2025-11-10T17:23:00.000Z",
    }  # fmt: skip
    assert list(obj["horizons"]) == ["1", "5", "15"]
    assert isinstance(obj["horizons"]["1"]["n"], int)


def _golden() -> list[dict[str, Any]]:
    # Python's json: the fixture's inputs hold NaN and infinities, which msgspec would not read
    with GOLDEN.open(encoding="ascii") as f:
        return [json.loads(line) for line in f]


def _forecast_of(d: dict[str, Any]) -> Forecast:
    return Forecast(
        **{
            **d,
            "quantile_levels": tuple(d["quantile_levels"]),
            "values": tuple(map(tuple, d["values"])),
        }
    )


BAND_RAW = b',"band":"raw"}'


def test_encodings_are_byte_identical_to_the_hand_written_encoders_output() -> None:
    """Skill payloads byte for byte; forecasts byte for byte up to the closing brace, where
    the ``band`` field is appended (the fixture predates it; its forecasts are raw)."""
    cases = _golden()
    assert [c["kind"] for c in cases].count("forecast") == 63
    assert [c["kind"] for c in cases].count("skill") == 20
    for case in cases:
        if case["kind"] == "forecast":
            assert "band" not in case["forecast"] and "band" not in case["payload"]
            encoded = encode_forecast(_forecast_of(case["forecast"]))
            assert encoded.endswith(BAND_RAW), case
            got = encoded.removesuffix(BAND_RAW) + b"}"
        else:
            args = case["args"]
            got = encode_skill(
                args["exchange"],
                args["symbol"],
                {h: figures for h, figures in args["figures"]},
                window_s=args["window_s"],
                updated_at_ms=args["updated_at_ms"],
            )
        assert got == case["payload"].encode("utf-8"), case


def test_a_received_payload_decodes_into_the_struct_and_encodes_back_to_the_same_bytes() -> None:
    bar_time_ms, close = BARS[1]
    f = band_forecast(bar_time_ms, close, levels=(0.05, 0.25, 0.5, 0.75, 0.95), horizon=15)
    raw = encode_forecast(f)
    payload = msgspec.json.decode(raw, type=ForecastPayload)
    assert payload == to_payload(f)
    assert msgspec.json.encode(payload) == raw
    assert forecast_payload(f) == json.loads(raw)
    assert tuple(json.loads(raw)) == FORECAST_FIELDS


def test_json_schema_comes_from_the_structs() -> None:
    schemas = json_schemas()
    forecast = schemas["forecast"]["$defs"]["ForecastPayload"]
    # every field is required but the one appended since the first schema-1 payloads
    assert FORECAST_FIELDS[-1] == "band"
    assert forecast["required"] == list(FORECAST_FIELDS[:-1])
    assert forecast["properties"]["band"]["default"] == "raw"
    assert sorted(forecast["properties"]["band"]["enum"]) == ["calibrated", "raw"]
    assert forecast["additionalProperties"] is False
    assert forecast["properties"]["schema"] == {"enum": [1]}
    assert schemas["skill"]["$defs"]["SkillPayload"]["required"] == list(
        SkillPayload.__struct_fields__
    )


def _valid_skill() -> dict[str, Any]:
    figures = {1: {"model_mae": 9.5, "skill": math.nan, "n": 3}}
    raw = encode_skill("binance", "BTCUSDT", figures, window_s=3600, updated_at_ms=BARS[0][0])
    obj: dict[str, Any] = json.loads(raw)
    return obj


SKILL_MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("missing field", _delete("window_s"), "missing fields: window_s"),
    ("unknown field", _set("price", 1), "unknown fields: price"),
    ("window zero", _set("window_s", 0), "window_s: Expected `int` >= 1"),
    ("horizon key", lambda o: o["horizons"].__setitem__("h1", {}), "horizons key 'h1': Expected"),
    (
        "figure text",
        lambda o: o["horizons"]["1"].__setitem__("n", "3"),
        "horizons[1][n]: Expected `int | float | null`, got `str`",
    ),
    ("updated_at", _set("updated_at", "2025-11-10T17:23:00Z"), "updated_at: Expected `str` match"),
    ("updated_at day 32", _set("updated_at", "2025-11-32T17:23:00.000Z"), "updated_at '2025-11-32"),
]


def test_skill_payload_validates() -> None:

    assert validate_skill_payload(_valid_skill()) == []
    jsonschema.validate(_valid_skill(), json_schemas()["skill"])
    assert validate_skill_payload("x") == ["payload is a str, expected an object"]
    for name, mutate, expected in SKILL_MUTATIONS:
        obj = _valid_skill()
        mutate(obj)
        problems = validate_skill_payload(obj)
        assert len(problems) == 1 and problems[0].startswith(expected), (name, problems)
