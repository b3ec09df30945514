"""The shared scores on small cases worked out by hand (binary fractions, so exact), on floats
and on arrays alike."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from streamer.core.scoring import covered, pinball_loss, skill


def test_pinball_loss_weighs_misses_by_the_level() -> None:
    # outcome 4 above the 0.25 quantile: 0.25 * 4; 4 below it: (0.25 - 1) * -4
    assert pinball_loss(4.0, 0.25) == 1.0
    assert pinball_loss(-4.0, 0.25) == 3.0
    assert pinball_loss(4.0, 0.75) == 3.0
    assert pinball_loss(-4.0, 0.75) == 1.0
    assert pinball_loss(-2.0, 0.5) == 1.0  # at the median: half the absolute error
    assert pinball_loss(0.0, 0.125) == 0.0


def test_pinball_loss_on_arrays_broadcasts_levels_over_the_last_axis() -> None:
    errors = np.array([[4.0, 4.0, -4.0], [-2.0, 0.0, 8.0]])  # [origin, level]
    levels = np.array([0.25, 0.5, 0.75])
    expected = np.array([[1.0, 2.0, 1.0], [1.5, 0.0, 6.0]])
    assert np.array_equal(pinball_loss(errors, levels), expected)
    assert float(np.mean(pinball_loss(errors, levels))) == 11.5 / 6


@given(
    error=st.floats(-1e6, 1e6, allow_nan=False),
    level=st.floats(0.001, 0.999),
)
def test_pinball_loss_is_the_larger_of_the_two_slopes(error: float, level: float) -> None:
    assert pinball_loss(error, level) == max(level * error, (level - 1.0) * error)
    assert pinball_loss(error, level) >= 0.0


def test_covered_includes_both_bounds() -> None:
    assert covered(1.0, 1.0, 2.0)
    assert covered(2.0, 1.0, 2.0)
    assert covered(1.5, 1.0, 2.0)
    assert not covered(0.5, 1.0, 2.0)
    assert not covered(2.5, 1.0, 2.0)
    actual = np.array([0.5, 1.0, 1.5, 2.0, 2.5])
    inside = covered(actual, np.full(5, 1.0), np.full(5, 2.0))
    assert inside.tolist() == [False, True, True, True, False]
    assert float(np.mean(inside)) == 0.6


def test_skill_is_the_share_of_the_reference_error_removed() -> None:
    assert skill(1.0, 4.0) == 0.75
    assert skill(4.0, 4.0) == 0.0
    assert skill(6.0, 4.0) == -0.5
    assert skill(0.0, 2.0) == 1.0
    assert skill(1.0, 0.0) is None  # the reference was perfect: nothing to beat
    assert skill(0.0, 0.0) is None
