"""What the tests of ``build_forecasts`` and ``build_calibrated`` share: a three-level model
spec, and what a persistence-plus-band model outputs for real last bars."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from fixtures.models import band_factors

from streamer.core.contracts.model import ModelSpec
from streamer.core.types import Bar

LEVELS = (0.1, 0.5, 0.9)
HORIZON = 4
TRAINED_AT = "2025-08-18T18:27:00Z"
SPEC = ModelSpec(
    window=60,
    horizon=HORIZON,
    interval_s=60,
    quantiles=LEVELS,
    version="v3",
    trained={"trained_at": TRAINED_AT},
    metrics={},
)
ISSUED_AT = 1_747_699_260_123


def band_output(
    bars: list[Bar], levels: Sequence[float] = LEVELS, band: float = 0.002
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """``[len(bars), HORIZON, len(levels)]``: each bar's close times the fixture band."""
    closes = np.array([[b.close] for b in bars], dtype=np.float32)[:, :, None]
    return np.asarray(closes * band_factors(HORIZON, levels, band)[None], dtype=np.float32)


def last_columns(bars: list[Bar]) -> tuple[list[tuple[str, str]], list[int], list[float]]:
    """The first three arguments of the builders: the bars' keys, open times and closes."""
    return [b.key for b in bars], [b.open_time_ms for b in bars], [b.close for b in bars]
