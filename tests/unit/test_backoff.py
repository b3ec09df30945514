from __future__ import annotations

import random

import pytest

from streamer.core.backoff import Backoff


def test_delays_grow_to_the_cap_with_jitter_and_reset() -> None:
    b = Backoff(1.0, 8.0, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(8)]
    caps = [1, 2, 4, 8, 8, 8, 8, 8]
    for delay, cap in zip(delays, caps, strict=True):
        assert cap / 2 <= delay <= cap
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule
    b.reset()
    assert 0.5 <= b.next_delay() <= 1.0


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)
