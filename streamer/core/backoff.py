"""Capped, jittered exponential backoff, as a pure iterator.

Jitter (a uniform draw in the upper half of the exponential cap) spreads reconnect storms; the
cap keeps an outage of hours from growing delays without bound; ``reset()`` after a successful
connection starts the next outage from the initial delay again.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self,
        initial_s: float = 1.0,
        max_s: float = 60.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial_s <= 0 or max_s < initial_s or factor < 1:
            raise ValueError("need 0 < initial_s <= max_s and factor >= 1")
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self._rng = rng or random.Random()
        self._attempt = 0

    def next_delay(self) -> float:
        """Delay before the next attempt: uniform in [cap/2, cap], cap doubling to ``max_s``."""
        cap = min(self.max_s, self.initial_s * self.factor**self._attempt)
        self._attempt = min(self._attempt + 1, 64)
        return cap / 2 + self._rng.random() * cap / 2

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt
