"""MQTT payloads of DESIGN 3.2: exact encoding, and a validator that catches each kind of fault.

The last closes come from real Kraken BTC/USDT 1-minute bars (tests/fixtures/kraken, see its
SOURCE.md); the forecast values around them are made by the persistence-plus-band rule of
tests/fixtures/models.py, which is what a forecast is, not a price series.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.core.contract import ContractError
from streamer.core.payloads import (
    PayloadError,
    decode_forecast_payload,
    encode_forecast,
    encode_skill,
    forecast_topic,
    iso_millis,
    iso_seconds,
    skill_topic,
    status_topic,
    validate_forecast_payload,
)
from streamer.core.types import MINUTE_MS, Forecast

BARS_CSV = (
    Path(__file__).resolve().parents[1]
    / "fixtures"
    / "kraken"
    / "XBTUSDT_1m_20251110_1723-20251111_0016.csv"
)


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


def test_topics_follow_design_3_2() -> None:
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
    }
    # the key order of DESIGN 3.2, for human readers of raw payloads
    assert list(json.loads(raw)) == [
        "schema", "exchange", "symbol", "interval", "bar_time", "issued_at", "last_close",
        "horizons_min", "median", "quantiles", "model", "stale",
    ]  # fmt: skip


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


MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("missing field", _delete("model"), "missing fields: model"),
    ("unknown field", _set("price", 1.0), "unknown fields: price"),
    ("wrong schema", _set("schema", 2), "schema is 2"),
    ("schema as bool", _set("schema", True), "schema is True"),
    ("empty symbol", _set("symbol", ""), "symbol is ''"),
    ("exchange not str", _set("exchange", 3), "exchange is 3"),
    ("wrong interval", _set("interval", "5m"), "interval is '5m'"),
    ("bar_time with ms", _set("bar_time", "2025-11-10T17:24:00.000Z"), "bar_time is"),
    ("bar_time mid-minute", _set("bar_time", "2025-11-10T17:24:30Z"), "not the start of a minute"),
    ("bar_time as ms int", _set("bar_time", 1762795440000), "bar_time is 1762795440000"),
    ("issued_at no ms", _set("issued_at", "2025-11-10T17:25:00Z"), "issued_at is"),
    ("issued_at local", _set("issued_at", "2025-11-10T18:25:00.042+01:00"), "issued_at is"),
    ("last_close zero", _set("last_close", 0), "last_close is 0"),
    ("last_close string", _set("last_close", "105351.1"), "last_close is '105351.1'"),
    ("horizons not 1..H", _set("horizons_min", [1, 5, 15]), "horizons_min is [1, 5, 15]"),
    ("horizons empty", _set("horizons_min", []), "horizons_min is []"),
    ("median short", lambda o: o["median"].pop(), "median has 2 values, expected 3"),
    ("median null", lambda o: o["median"].__setitem__(2, None), "median has non-finite"),
    ("quantile long", lambda o: o["quantiles"]["0.9"].append(1.0), "quantiles[0.9] has 4"),
    ("quantile bool", lambda o: o["quantiles"]["0.1"].__setitem__(0, True), "quantiles[0.1] has"),
    ("quantile key", lambda o: o["quantiles"].__setitem__("p90", [1.0] * 3), "'p90' is not"),
    ("quantile key 1.5", lambda o: o["quantiles"].__setitem__("1.5", [1.0] * 3), "'1.5' is not"),
    ("median repeated", lambda o: o["quantiles"].__setitem__("0.5", o["median"]), "repeat"),
    ("quantiles list", _set("quantiles", [[1.0]]), "quantiles is [[1.0]]"),
    ("crossing", _lower_above_median_at_horizon_2, "horizon 2: level 0.5"),
    ("median outside", _median_above_upper, "horizon 1: level 0.9"),
    ("model fields", _set("model", {"version": "x"}), "model is"),
    ("model version", _set("model", {"version": "", "trained_at": ""}), "model.version is ''"),
    ("trained_at", _set("model", {"version": "v", "trained_at": None}), "trained_at is None"),
    ("stale as int", _set("stale", 0), "stale is 0"),
]


def test_valid_payload_has_no_problems() -> None:
    assert validate_forecast_payload(_valid()) == []


@pytest.mark.parametrize(
    ("mutate", "expected"), [(m, e) for _, m, e in MUTATIONS], ids=[n for n, _, _ in MUTATIONS]
)
def test_validator_names_each_kind_of_problem(
    mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    obj = copy.deepcopy(_valid())
    mutate(obj)
    problems = validate_forecast_payload(obj)
    assert len(problems) == 1, problems
    assert expected in problems[0]


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
