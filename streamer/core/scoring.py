"""Forecast scores, one definition for online and offline evaluation.

The streamer scores each forecast as its outcome arrives (``streamer.core.evaluation``) and the
trainer scores every origin of a test range at once (``trainer.evaluate``); both use these
functions, so a figure on the skill topic and the same figure in a training report mean the
same thing. Each is plain arithmetic that takes Python floats (the online path, one score at a
time, no numpy call) or numpy arrays (elementwise, broadcasting). Pure.
"""

from __future__ import annotations

from typing import TypeVar, overload

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Values = TypeVar("Values", float, FloatArray)


def pinball_loss(error: Values, level: Values) -> Values:
    """Pinball (quantile) loss at ``level`` of ``error = actual - forecast``.

    ``level * error`` when the outcome is above the forecast, ``(level - 1) * error`` when it is
    below: minimised in expectation by the true ``level`` quantile, so it scores a quantile
    forecast, not only its median.
    """
    # the textbook form u * (level - 1[u < 0]): ``error < 0`` counts as 1 below, 0 above
    loss: Values = error * (level - (error < 0))
    return loss


@overload
def covered(actual: float, lower: float, upper: float) -> bool: ...
@overload
def covered(actual: FloatArray, lower: FloatArray, upper: FloatArray) -> BoolArray: ...
def covered(
    actual: float | FloatArray, lower: float | FloatArray, upper: float | FloatArray
) -> bool | BoolArray:
    """Where ``actual`` lies in the closed interval ``[lower, upper]`` (the outer quantiles)."""
    return (lower <= actual) & (actual <= upper)


def skill(model_error: float, reference_error: float) -> float | None:
    """``1 - model / reference``: the share of the reference's error (persistence, "the price
    stays where it is") that the model removes; None when the reference made no error."""
    return 1.0 - model_error / reference_error if reference_error > 0 else None
