"""The model artifact contracts (docs/contracts.md, versions 1 and 2), in code.

Shared by the trainer (which writes artifacts and scores them in ``tickcast-trainer evaluate``)
and the streamer (which refuses any artifact that does not meet it): both load a model through
``check_artifact`` and feed it through ``model_inputs``. Pure: it reads metadata dicts, declared
(name, shape, type) tuples and arrays, never files or sessions.

Contract 1 takes the bars only. Contract 2 also takes ``bar_time``, the open time (epoch
seconds, UTC) of each row's last bar, so the graph can compute calendar features itself: the
caller still scales nothing. A model declares its version in ``tickcast.contract``; the
streamer serves both, side by side and across a hot reload.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

CONTRACTS = (1, 2)  # the versions this code reads and serves
INPUT_NAME = "bars"
TIME_INPUT_NAME = "bar_time"  # contract 2: open time of each row's last bar, epoch seconds UTC
OUTPUT_NAME = "quantiles"
N_FEATURES = 5  # open, high, low, close, volume
INTERVAL_S = 60
MIN_OPSET = 17
TENSOR_FLOAT = "tensor(float)"  # float32, as onnxruntime names a declared element type
TENSOR_INT64 = "tensor(int64)"
# the levels a contract-2 model is trained at unless configured otherwise
DEFAULT_LEVELS_V2 = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)

TensorDecl = tuple[str, Sequence[int | str | None], str]
"""A declared graph input or output: (name, shape with symbolic dims as str/None, type)."""


class DeclaredTensor(Protocol):
    """What a runtime says about a graph input or output (onnxruntime's ``NodeArg``)."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> Sequence[int | str | None]: ...

    @property
    def type(self) -> str: ...


def declarations(args: Iterable[DeclaredTensor]) -> list[TensorDecl]:
    """``(name, shape, type)`` of each declared input or output, for ``check_io``."""
    return [(arg.name, list(arg.shape), arg.type) for arg in args]


META_CONTRACT = "tickcast.contract"
META_WINDOW = "tickcast.window"
META_HORIZON = "tickcast.horizon"
META_INTERVAL = "tickcast.interval_s"
META_QUANTILES = "tickcast.quantiles"
META_VERSION = "tickcast.version"
META_TRAINED = "tickcast.trained"
META_METRICS = "tickcast.metrics"
REQUIRED_META = (
    META_CONTRACT,
    META_WINDOW,
    META_HORIZON,
    META_INTERVAL,
    META_QUANTILES,
    META_VERSION,
    META_TRAINED,
    META_METRICS,
)


class ContractError(ValueError):
    """An artifact or a model output does not meet the contract; the message says why."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a conforming model declares about itself in its metadata."""

    window: int
    horizon: int
    interval_s: int
    quantiles: tuple[float, ...]
    version: str
    trained: dict[str, Any]
    metrics: dict[str, Any]
    contract: int = 1

    @property
    def input_names(self) -> tuple[str, ...]:
        """The graph inputs this contract feeds, in feed order."""
        return (INPUT_NAME,) if self.contract == 1 else (INPUT_NAME, TIME_INPUT_NAME)

    @property
    def median_index(self) -> int:
        return self.quantiles.index(0.5)

    @property
    def trained_at(self) -> str:
        """ISO time the model was trained, or "" when the metadata does not say."""
        value = self.trained.get("trained_at", "")
        return value if isinstance(value, str) else ""

    def to_metadata(self) -> dict[str, str]:
        return {
            META_CONTRACT: str(self.contract),
            META_WINDOW: str(self.window),
            META_HORIZON: str(self.horizon),
            META_INTERVAL: str(self.interval_s),
            META_QUANTILES: json.dumps(list(self.quantiles)),
            META_VERSION: self.version,
            META_TRAINED: json.dumps(self.trained, sort_keys=True),
            META_METRICS: json.dumps(self.metrics, sort_keys=True),
        }


def _positive_int(meta: dict[str, str], key: str) -> int:
    raw = meta[key]
    try:
        value = int(raw)
    except ValueError:
        raise ContractError(f"metadata {key}={raw!r} is not an integer") from None
    if value <= 0:
        raise ContractError(f"metadata {key}={value} must be positive")
    return value


def _json_object(meta: dict[str, str], key: str) -> dict[str, Any]:
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise ContractError(f"metadata {key} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ContractError(f"metadata {key} must be a JSON object")
    return value


def parse_metadata(meta: dict[str, str], *, interval_s: int = INTERVAL_S) -> ModelSpec:
    """Validate ``metadata_props`` of an artifact and return its spec, or raise ContractError.

    ``interval_s`` is the bar interval the caller serves or scores: the streamer's 60, or the
    interval of the data ``tickcast-trainer evaluate`` scores on (daily bars are trained and
    scored with the same code, but never served).
    """
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ContractError(f"metadata is missing {', '.join(missing)}")
    served = {str(version): version for version in CONTRACTS}
    if meta[META_CONTRACT] not in served:
        raise ContractError(
            f"metadata {META_CONTRACT}={meta[META_CONTRACT]!r}, this streamer serves contracts "
            f"{' and '.join(served)}"
        )
    window = _positive_int(meta, META_WINDOW)
    horizon = _positive_int(meta, META_HORIZON)
    declared_interval_s = _positive_int(meta, META_INTERVAL)
    if declared_interval_s != interval_s:
        raise ContractError(
            f"metadata {META_INTERVAL}={declared_interval_s}, expected {interval_s}"
        )
    try:
        levels = json.loads(meta[META_QUANTILES])
    except json.JSONDecodeError as exc:
        raise ContractError(f"metadata {META_QUANTILES} is not valid JSON: {exc}") from None
    if (
        not isinstance(levels, list)
        or not levels
        or not all(isinstance(q, int | float) and 0.0 < q < 1.0 for q in levels)
    ):
        raise ContractError(f"metadata {META_QUANTILES} must be a list of levels in (0, 1)")
    quantiles = tuple(float(q) for q in levels)
    if list(quantiles) != sorted(set(quantiles)):
        raise ContractError(f"metadata {META_QUANTILES} must be strictly increasing")
    if 0.5 not in quantiles:
        raise ContractError(f"metadata {META_QUANTILES} must include 0.5")
    if not meta[META_VERSION]:
        raise ContractError(f"metadata {META_VERSION} is empty")
    return ModelSpec(
        window=window,
        horizon=horizon,
        interval_s=declared_interval_s,
        quantiles=quantiles,
        version=meta[META_VERSION],
        trained=_json_object(meta, META_TRAINED),
        metrics=_json_object(meta, META_METRICS),
        contract=served[meta[META_CONTRACT]],
    )


def check_io_shapes(
    input_name: str,
    input_shape: list[Any],
    output_name: str,
    output_shape: list[Any],
    spec: ModelSpec,
) -> None:
    """Check declared graph I/O against the contract; symbolic dims (str/None) pass."""
    if input_name != INPUT_NAME:
        raise ContractError(f"model input is named {input_name!r}, expected {INPUT_NAME!r}")
    if output_name != OUTPUT_NAME:
        raise ContractError(f"model output is named {output_name!r}, expected {OUTPUT_NAME!r}")
    expected_in = [None, spec.window, N_FEATURES]
    expected_out = [None, spec.horizon, len(spec.quantiles)]
    for what, shape, expected in (
        ("input", input_shape, expected_in),
        ("output", output_shape, expected_out),
    ):
        if len(shape) != 3:
            raise ContractError(f"model {what} has rank {len(shape)}, expected 3")
        for axis, (got, want) in enumerate(zip(shape, expected, strict=True)):
            if want is not None and isinstance(got, int) and got != want:
                raise ContractError(f"model {what} axis {axis} is {got}, metadata says {want}")


def _check_time_input(shape: Sequence[int | str | None], element: str) -> None:
    if len(shape) != 1:
        raise ContractError(f"model input {TIME_INPUT_NAME!r} has rank {len(shape)}, expected 1")
    if element != TENSOR_INT64:
        raise ContractError(
            f"model input {TIME_INPUT_NAME!r} is {element}, expected {TENSOR_INT64}"
        )


def check_io(inputs: Sequence[TensorDecl], outputs: Sequence[TensorDecl], spec: ModelSpec) -> None:
    """Check a session's declared inputs and outputs: exactly the inputs of the spec's contract
    (any order) and one output, named, shaped and typed as the contract and ``spec`` say.
    Raises ContractError."""
    names = [name for name, _, _ in inputs]
    expected = list(spec.input_names)
    if len(names) != len(expected):
        raise ContractError(f"model has inputs {names}, expected exactly {expected}")
    if len(outputs) != 1:
        names = [name for name, _, _ in outputs]
        raise ContractError(f"model has outputs {names}, expected exactly [{OUTPUT_NAME!r}]")
    if len(expected) > 1 and sorted(names) != sorted(expected):
        raise ContractError(f"model inputs are named {names}, expected {expected}")
    declared = {name: (list(shape), element) for name, shape, element in inputs}
    in_name = INPUT_NAME if len(expected) > 1 else names[0]
    in_shape, in_type = declared[in_name]
    out_name, out_shape, out_type = outputs[0]
    check_io_shapes(in_name, in_shape, out_name, list(out_shape), spec)
    for what, name, element in (("input", in_name, in_type), ("output", out_name, out_type)):
        if element != TENSOR_FLOAT:
            raise ContractError(f"model {what} {name!r} is {element}, expected {TENSOR_FLOAT}")
    if TIME_INPUT_NAME in declared:
        _check_time_input(*declared[TIME_INPUT_NAME])


def check_artifact(
    meta: dict[str, str],
    inputs: Sequence[TensorDecl],
    outputs: Sequence[TensorDecl],
    *,
    interval_s: int = INTERVAL_S,
) -> ModelSpec:
    """Every load-time check of an artifact (metadata, then I/O); its spec, or ContractError."""
    spec = parse_metadata(meta, interval_s=interval_s)
    check_io(inputs, outputs, spec)
    return spec


def model_inputs(
    spec: ModelSpec,
    bars: npt.NDArray[np.float32],
    bar_time_s: npt.NDArray[np.int64] | Sequence[int] | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """The feed of one inference call: ``bars`` ``[n, window, 5]`` float32 and, for contract 2,
    ``bar_time`` ``[n]`` int64, the open time in epoch seconds of each row's last bar. Raises
    ValueError on a shape the spec does not take or a contract-2 call without times."""
    if bars.ndim != 3 or bars.shape[1:] != (spec.window, N_FEATURES):
        raise ValueError(
            f"batch shape {bars.shape}, model {spec.version} needs [n, {spec.window}, {N_FEATURES}]"
        )
    feed: dict[str, npt.NDArray[Any]] = {INPUT_NAME: np.ascontiguousarray(bars, np.float32)}
    if spec.contract == 1:
        return feed
    if bar_time_s is None:
        raise ValueError(f"model {spec.version} (contract 2) needs the bar time of every row")
    times = np.ascontiguousarray(bar_time_s, dtype=np.int64)
    if times.shape != (bars.shape[0],):
        raise ValueError(f"bar times of shape {times.shape}, expected ({bars.shape[0]},)")
    feed[TIME_INPUT_NAME] = times
    return feed


def bad_output_rows(values: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Per batch row: True where the output is not finite or its quantiles cross."""
    if values.ndim != 3:
        raise ContractError(f"model output has rank {values.ndim}, expected 3")
    not_finite = ~np.isfinite(values).all(axis=(1, 2))
    crossing = (np.diff(values, axis=2) < 0).any(axis=(1, 2))
    return np.asarray(not_finite | crossing, dtype=np.bool_)


def quantile_key(level: float) -> str:
    """Payload key of a quantile level: ``0.1`` -> "0.1" (shortest round-trip form)."""
    if not math.isfinite(level):
        raise ContractError(f"quantile level {level} is not finite")
    return repr(float(level))
