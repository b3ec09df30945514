"""Model output to ``Forecast`` values: pure, so a round's bookkeeping is tested without a model.

A row the contract forbids (non-finite, crossing quantiles) never becomes a forecast: it is
returned separately so that the caller counts it and publishes nothing for that symbol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamer.core.contract import ModelSpec, bad_output_rows
from streamer.core.types import Forecast

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What a forecast says about the model that made it."""

    version: str
    trained_at: str
    stale: bool


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
    expected = (len(keys), spec.horizon, len(spec.quantiles))
    if output.shape != expected:
        raise ValueError(f"model output shape {output.shape}, expected {expected}")
    bad = bad_output_rows(output)
    forecasts: list[Forecast] = []
    rejected: list[Key] = []
    rows = output.astype(np.float64).tolist()
    for key, t, close, row, is_bad in zip(
        keys, last_times_ms, last_closes, rows, bad.tolist(), strict=True
    ):
        if is_bad:
            rejected.append(key)
            continue
        forecasts.append(
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
            )
        )
    return forecasts, rejected
