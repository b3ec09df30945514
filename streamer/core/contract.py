"""The model artifact contract (DESIGN.md section 3.1, contract version 1), in code.

Shared by the trainer (which writes artifacts) and the streamer (which refuses any artifact that
does not meet it). Pure: it reads metadata dicts and arrays, never files or sessions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

CONTRACT_VERSION = 1
INPUT_NAME = "bars"
OUTPUT_NAME = "quantiles"
N_FEATURES = 5  # open, high, low, close, volume
INTERVAL_S = 60
MIN_OPSET = 17

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
            META_CONTRACT: str(CONTRACT_VERSION),
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


def parse_metadata(meta: dict[str, str]) -> ModelSpec:
    """Validate ``metadata_props`` of an artifact and return its spec, or raise ContractError."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ContractError(f"metadata is missing {', '.join(missing)}")
    if meta[META_CONTRACT] != str(CONTRACT_VERSION):
        raise ContractError(
            f"metadata {META_CONTRACT}={meta[META_CONTRACT]!r}, this streamer serves contract "
            f"{CONTRACT_VERSION}"
        )
    window = _positive_int(meta, META_WINDOW)
    horizon = _positive_int(meta, META_HORIZON)
    interval_s = _positive_int(meta, META_INTERVAL)
    if interval_s != INTERVAL_S:
        raise ContractError(f"metadata {META_INTERVAL}={interval_s}, expected {INTERVAL_S}")
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
        interval_s=interval_s,
        quantiles=quantiles,
        version=meta[META_VERSION],
        trained=_json_object(meta, META_TRAINED),
        metrics=_json_object(meta, META_METRICS),
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
