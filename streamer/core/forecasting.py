"""Model output to ``Forecast`` values: pure, so a round's bookkeeping is tested without a model.

A row the contract forbids (non-finite, crossing quantiles) never becomes a forecast: it is
returned separately so that the caller counts it and publishes nothing for that symbol.

With online calibration (``build_calibrated``) each good row is also calibrated: the published
forecast carries the calibrated band (``band="calibrated"``) and the raw forecast is kept for
the online evaluator, whose figures stay the model's own. The rows are checked on the raw
output first: calibration sorts each row, so it would hide a crossing raw row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamer.core.calibration import OnlineCalibrator
from streamer.core.contracts.model import ModelSpec, bad_output_rows
from streamer.core.types import Band, Forecast

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What a forecast says about the model that made it."""

    version: str
    trained_at: str
    stale: bool


@dataclass(frozen=True, slots=True)
class RawRows:
    """A chunk's good rows as the model made them, made into forecasts only when asked: the
    evaluator records them after the published ones are out, off the close-to-publish path."""

    keys: list[Key]
    last_times_ms: list[int]
    last_closes: list[float]
    values: npt.NDArray[np.float32]
    spec: ModelSpec
    model: ModelIdentity
    issued_at_ms: int

    def forecasts(self) -> list[Forecast]:
        return _forecasts(
            self.keys, self.last_times_ms, self.last_closes, self.values, self.spec,
            self.model, self.issued_at_ms, "raw",
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Built:
    """A chunk's forecasts: ``published`` go to the sink, ``raw_forecasts()`` (the model's own
    band) to the evaluator, the published ones themselves when they carry the raw band."""

    published: list[Forecast]
    rejected: list[Key]
    raw: RawRows | None = None

    def raw_forecasts(self) -> list[Forecast]:
        return self.published if self.raw is None else self.raw.forecasts()


def build_forecasts(
    keys: Sequence[Key],
    last_times_ms: Sequence[int],
    last_closes: Sequence[float],
    output: npt.NDArray[np.float32],
    spec: ModelSpec,
    model: ModelIdentity,
    issued_at_ms: int,
) -> tuple[list[Forecast], list[Key]]:
    """One forecast per row of ``output`` (``[n, horizon, n_quantiles]``), plus the bad keys.

    Row ``i`` is the forecast for ``keys[i]`` made at the bar opening at ``last_times_ms[i]``
    whose close was ``last_closes[i]``.
    """
    good, rejected = _split(keys, output, spec)
    forecasts = _forecasts(
        [keys[i] for i in good],
        [last_times_ms[i] for i in good],
        [last_closes[i] for i in good],
        output[good],
        spec,
        model,
        issued_at_ms,
        "raw",
    )
    return forecasts, rejected


def build_calibrated(
    keys: Sequence[Key], last_times_ms: Sequence[int], last_closes: Sequence[float],
    output: npt.NDArray[np.float32], spec: ModelSpec, model: ModelIdentity, issued_at_ms: int,
    calibrator: OnlineCalibrator, *, publish_calibrated: bool,
) -> Built:  # fmt: skip
    """``build_forecasts`` with every good row calibrated by ``calibrator`` (which keeps the
    band it made for when the forecast is realised). The calibrated band is published only with
    ``publish_calibrated``; otherwise it is still computed, so that the raw and the calibrated
    coverage can be compared before calibration is switched on."""
    good, rejected = _split(keys, output, spec)
    good_keys = [keys[i] for i in good]
    times = [last_times_ms[i] for i in good]
    closes = [last_closes[i] for i in good]
    raw_rows = output[good]
    calibrated = calibrator.calibrate(good_keys, times, raw_rows)
    if not publish_calibrated:
        raw = _forecasts(good_keys, times, closes, raw_rows, spec, model, issued_at_ms, "raw")
        return Built(raw, rejected)
    published = _forecasts(
        good_keys, times, closes, calibrated, spec, model, issued_at_ms, "calibrated"
    )
    return Built(
        published,
        rejected,
        RawRows(good_keys, times, closes, raw_rows, spec, model, issued_at_ms),
    )


def _split(
    keys: Sequence[Key], output: npt.NDArray[np.float32], spec: ModelSpec
) -> tuple[list[int], list[Key]]:
    """Indexes of the rows the contract allows, and the keys of the others."""
    expected = (len(keys), spec.horizon, len(spec.quantiles))
    if output.shape != expected:
        raise ValueError(f"model output shape {output.shape}, expected {expected}")
    bad = bad_output_rows(output).tolist()
    good = [i for i, is_bad in enumerate(bad) if not is_bad]
    return good, [key for key, is_bad in zip(keys, bad, strict=True) if is_bad]


def _forecasts(
    keys: Sequence[Key],
    last_times_ms: Sequence[int],
    last_closes: Sequence[float],
    values: npt.NDArray[np.floating],
    spec: ModelSpec,
    model: ModelIdentity,
    issued_at_ms: int,
    band: Band,
) -> list[Forecast]:
    rows = values.astype(np.float64).tolist()
    return [
        Forecast(
            exchange=key[0],
            symbol=key[1],
            bar_time_ms=t,
            last_close=close,
            quantile_levels=spec.quantiles,
            values=tuple(map(tuple, row)),
            model_version=model.version,
            model_trained_at=model.trained_at,
            stale=model.stale,
            issued_at_ms=issued_at_ms,
            band=band,
        )
        for key, t, close, row in zip(keys, last_times_ms, last_closes, rows, strict=True)
    ]
