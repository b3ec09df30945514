"""The model artifact contract's pure checks: declared I/O as (name, shape, type) tuples and the
metadata against the interval the caller expects, for contract 1 (``bars``) and contract 2
(``bars`` and ``bar_time``), and the feed ``model_inputs`` builds for each. No session, no file:
the streamer's open_model and the trainer's OnnxForecaster feed these functions what
onnxruntime declares."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from streamer.core.contracts.model import (
    ContractError,
    ModelSpec,
    TensorDecl,
    check_artifact,
    check_io,
    declarations,
    model_inputs,
    parse_metadata,
)

SPEC = ModelSpec(
    window=60,
    horizon=15,
    interval_s=60,
    quantiles=(0.1, 0.5, 0.9),
    version="v1",
    trained={"trained_at": "2025-08-18T18:27:00Z"},
    metrics={},
)
BARS: TensorDecl = ("bars", ["batch", 60, 5], "tensor(float)")
QUANTILES: TensorDecl = ("quantiles", ["batch", 15, 3], "tensor(float)")


def test_a_conforming_declaration_passes_with_symbolic_or_fixed_batch() -> None:
    check_io([BARS], [QUANTILES], SPEC)
    check_io(
        [("bars", [None, 60, 5], "tensor(float)")],
        [("quantiles", [7, 15, 3], "tensor(float)")],
        SPEC,
    )
    check_io([("bars", ["b", "w", 5], "tensor(float)")], [QUANTILES], SPEC)  # symbolic window


def bars(*shape: int | str, element: str = "tensor(float)") -> TensorDecl:
    return ("bars", list(shape), element)


def quantiles(*shape: int | str, element: str = "tensor(float)") -> TensorDecl:
    return ("quantiles", list(shape), element)


# declarations that break contract 1: why each is refused
CONTRACT_1_BREAKS: list[tuple[list[TensorDecl], list[TensorDecl], str]] = [
    ([], [QUANTILES], "model has inputs [], expected exactly ['bars']"),
    ([BARS, BARS], [QUANTILES], "model has inputs ['bars', 'bars'], expected exactly"),
    ([BARS], [QUANTILES, ("extra", [1], "tensor(float)")], "outputs ['quantiles', 'extra']"),
    (
        [("x", ["b", 60, 5], "tensor(float)")],
        [QUANTILES],
        "input is named 'x', expected 'bars'",
    ),
    (
        [BARS],
        [("y", ["b", 15, 3], "tensor(float)")],
        "output is named 'y', expected 'quantiles'",
    ),
    ([bars("b", 60)], [QUANTILES], "model input has rank 2, expected 3"),
    ([BARS], [quantiles("b", 15, 3, 1)], "model output has rank 4, expected 3"),
    ([bars("b", 30, 5)], [QUANTILES], "model input axis 1 is 30, metadata says 60"),
    ([bars("b", 60, 4)], [QUANTILES], "model input axis 2 is 4, metadata says 5"),
    ([BARS], [quantiles("b", 10, 3)], "model output axis 1 is 10, metadata says 15"),
    ([BARS], [quantiles("b", 15, 5)], "model output axis 2 is 5, metadata says 3"),
    (
        [bars("b", 60, 5, element="tensor(double)")],
        [QUANTILES],
        "model input 'bars' is tensor(double), expected tensor(float)",
    ),
    (
        [BARS],
        [quantiles("b", 15, 3, element="tensor(float16)")],
        "model output 'quantiles' is tensor(float16), expected tensor(float)",
    ),
]


class NodeArg:
    """Stands in for onnxruntime's NodeArg: the three attributes the contract reads."""

    def __init__(self, name: str, shape: list[Any], type: str) -> None:
        self.name, self.shape, self.type = name, shape, type


def test_declarations_read_name_shape_and_type() -> None:
    assert declarations([NodeArg("bars", ["batch", 60, 5], "tensor(float)")]) == [BARS]


def test_the_interval_is_the_callers_never_rewritten() -> None:
    daily = dataclasses.replace(SPEC, interval_s=86_400)
    meta = daily.to_metadata()
    with pytest.raises(ContractError, match=r"tickcast\.interval_s=86400, expected 60"):
        parse_metadata(meta)  # the streamer's default: 1-minute bars
    assert parse_metadata(meta, interval_s=86_400) == daily  # scored on daily bars
    with pytest.raises(ContractError, match=r"tickcast\.interval_s=60, expected 86400"):
        parse_metadata(SPEC.to_metadata(), interval_s=86_400)  # a 1-minute model, daily data
    assert meta["tickcast.interval_s"] == "86400"  # the metadata itself is left alone


def test_check_artifact_checks_metadata_then_declarations() -> None:
    assert check_artifact(SPEC.to_metadata(), [BARS], [QUANTILES]) == SPEC
    with pytest.raises(ContractError, match=r"metadata is missing tickcast\.window"):
        meta = SPEC.to_metadata()
        del meta["tickcast.window"]
        check_artifact(meta, [BARS], [QUANTILES])
    with pytest.raises(ContractError, match="axis 1 is 30, metadata says 60"):
        check_artifact(SPEC.to_metadata(), [("bars", ["b", 30, 5], "tensor(float)")], [QUANTILES])
    with pytest.raises(ContractError, match="expected 60"):
        daily = dataclasses.replace(SPEC, interval_s=86_400).to_metadata()
        check_artifact(daily, [BARS], [QUANTILES])
    daily_spec = check_artifact(daily, [BARS], [QUANTILES], interval_s=86_400)
    assert daily_spec.interval_s == 86_400


# --- contract 2: ``bar_time`` beside ``bars`` ----------------------------------------------

LEVELS_V2 = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
SPEC_V2 = dataclasses.replace(SPEC, window=240, quantiles=LEVELS_V2, version="v2", contract=2)
BARS_V2: TensorDecl = ("bars", ["batch", 240, 5], "tensor(float)")
TIME: TensorDecl = ("bar_time", ["batch"], "tensor(int64)")
QUANTILES_V2: TensorDecl = ("quantiles", ["batch", 15, 7], "tensor(float)")


def test_contract_2_metadata_round_trips_with_its_version_and_levels() -> None:
    meta = SPEC_V2.to_metadata()
    assert meta["tickcast.contract"] == "2"
    assert meta["tickcast.quantiles"] == "[0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]"
    spec = parse_metadata(meta)
    assert spec == SPEC_V2 and spec.contract == 2
    assert spec.input_names == ("bars", "bar_time")
    assert spec.median_index == 3
    assert parse_metadata(SPEC.to_metadata()).contract == 1
    assert SPEC.input_names == ("bars",)


@pytest.mark.parametrize("version", ["0", "3", "", "2.0", "two"])
def test_contract_versions_other_than_1_and_2_are_refused(version: str) -> None:
    meta = SPEC_V2.to_metadata() | {"tickcast.contract": version}
    with pytest.raises(ContractError, match="this streamer serves contracts 1 and 2"):
        parse_metadata(meta)


def test_a_contract_2_declaration_passes_in_either_input_order() -> None:
    check_io([BARS_V2, TIME], [QUANTILES_V2], SPEC_V2)
    check_io([TIME, BARS_V2], [QUANTILES_V2], SPEC_V2)
    check_io([BARS_V2, ("bar_time", [None], "tensor(int64)")], [QUANTILES_V2], SPEC_V2)
    check_io([BARS_V2, ("bar_time", [32], "tensor(int64)")], [QUANTILES_V2], SPEC_V2)
    assert check_artifact(SPEC_V2.to_metadata(), [TIME, BARS_V2], [QUANTILES_V2]) == SPEC_V2


# and contract 2
CONTRACT_2_BREAKS: list[tuple[list[TensorDecl], list[TensorDecl], str]] = [
    (
        [BARS_V2],
        [QUANTILES_V2],
        "model has inputs ['bars'], expected exactly ['bars', 'bar_time']",
    ),
    (
        [BARS_V2, TIME, ("extra", ["batch"], "tensor(int64)")],
        [QUANTILES_V2],
        "model has inputs ['bars', 'bar_time', 'extra'], expected exactly",
    ),
    (
        [BARS_V2, ("time", ["batch"], "tensor(int64)")],
        [QUANTILES_V2],
        "model inputs are named ['bars', 'time'], expected ['bars', 'bar_time']",
    ),
    (
        [BARS_V2, ("bar_time", ["batch"], "tensor(float)")],
        [QUANTILES_V2],
        "model input 'bar_time' is tensor(float), expected tensor(int64)",
    ),
    (
        [BARS_V2, ("bar_time", ["batch", 1], "tensor(int64)")],
        [QUANTILES_V2],
        "model input 'bar_time' has rank 2, expected 1",
    ),
    (
        [("bars", ["b", 60, 5], "tensor(float)"), TIME],
        [QUANTILES_V2],
        "model input axis 1 is 60, metadata says 240",
    ),
    (
        [BARS_V2, TIME],
        [("quantiles", ["b", 15, 3], "tensor(float)")],
        "model output axis 2 is 3, metadata says 7",
    ),
    (
        [("bars", ["b", 240, 5], "tensor(double)"), TIME],
        [QUANTILES_V2],
        "model input 'bars' is tensor(double), expected tensor(float)",
    ),
]


@pytest.mark.parametrize(
    ("spec", "inputs", "outputs", "message"),
    [(SPEC, *case) for case in CONTRACT_1_BREAKS]
    + [(SPEC_V2, *case) for case in CONTRACT_2_BREAKS],
)
def test_declarations_that_break_the_contract_say_why(
    spec: ModelSpec, inputs: list[TensorDecl], outputs: list[TensorDecl], message: str
) -> None:
    with pytest.raises(ContractError) as info:
        check_io(inputs, outputs, spec)
    assert message in str(info.value)


def test_a_contract_1_graph_with_a_time_input_is_refused() -> None:
    with pytest.raises(ContractError, match=r"model has inputs \['bars', 'bar_time'\], expected"):
        check_io([BARS, TIME], [QUANTILES], SPEC)


def test_model_inputs_feed_bar_time_to_contract_2_only() -> None:
    bars = np.full((3, 240, 5), 100.0, dtype=np.float32)[:, :, :]
    times = [1_704_067_200, 1_704_067_260, 1_704_067_320]
    feed = model_inputs(SPEC_V2, bars, times)
    assert list(feed) == ["bars", "bar_time"]
    assert feed["bars"].dtype == np.float32 and feed["bars"].flags.c_contiguous
    assert feed["bar_time"].dtype == np.int64 and feed["bar_time"].tolist() == times
    with pytest.raises(ValueError, match=r"contract 2\) needs the bar time of every row"):
        model_inputs(SPEC_V2, bars)
    with pytest.raises(ValueError, match=r"bar times of shape \(2,\), expected \(3,\)"):
        model_inputs(SPEC_V2, bars, times[:2])
    with pytest.raises(ValueError, match=r"needs \[n, 240, 5\]"):
        model_inputs(SPEC_V2, bars[:, :60])
    one = model_inputs(SPEC, np.ones((3, 60, 5), np.float32), times)
    assert list(one) == ["bars"]  # contract 1 takes no time, whatever the caller has
    assert list(model_inputs(SPEC, np.ones((3, 60, 5), np.float32))) == ["bars"]
