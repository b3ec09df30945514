"""One retry policy for every shell: what to retry, how long to wait, when to give up.

Shells turn their library's errors into the two kinds here, at the one place where they call
out: ``Transient`` (the same call may succeed later: a connection refused, a timeout, a 5xx, a
429 with its ``Retry-After``) and ``Permanent`` (it will not: a 400 for a delisted symbol, a
model that breaks the contract). ``RetryPolicy.decide`` then says whether and when to try
again, drawing delays from a capped, jittered exponential ``Backoff`` that the caller resets
after a success. A permanent failure is never retried: the caller counts it, logs it once and
sets the item aside, so that no failing item blocks the items queued behind it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

# HTTP answers that ask the client to slow down: 429; 418, Binance's IP ban for ignoring 429s;
# 403, a WAF limit. After them, and after timeouts and server-side trouble, the same request
# may succeed later.
THROTTLING_HTTP = frozenset({403, 418, 429})
RETRYABLE_HTTP = THROTTLING_HTTP | {408, 425}


class Transient(Exception):
    """A failure that may pass; ``retry_after_s``: how long the server asked us to wait."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Throttled(Transient):
    """The server asked us to slow down (HTTP 429, 418, 403): wait as long as it says."""


class Banned(Throttled):
    """The server banned this client (HTTP 418, Binance's escalating IP ban) for
    ``retry_after_s``: no call to it until then, however long that is."""


class Permanent(Exception):
    """A failure that repeating the same call cannot fix."""


def http_failure(status: int, message: str, retry_after: str | None = None) -> Exception:
    """The failure an HTTP ``status`` other than 200 stands for: ``Throttled``, another
    ``Transient`` (timeouts, 5xx) or ``Permanent`` (any other 4xx)."""
    wait = parse_retry_after(retry_after)
    if status == 418:
        return Banned(message, retry_after_s=wait)
    if status in THROTTLING_HTTP:
        return Throttled(message, retry_after_s=wait)
    if status in RETRYABLE_HTTP or status >= 500:
        return Transient(message, retry_after_s=wait)
    return Permanent(message)


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta seconds, or an HTTP date when ``now_s``
    (epoch seconds) is given. None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    if now_s is None:
        return None
    try:
        return max(parsedate_to_datetime(text).timestamp() - now_s, 0.0)
    except (TypeError, ValueError):
        return None


class Backoff:
    """Capped, jittered exponential delays: uniform in [cap/2, cap], cap doubling to ``max_s``.

    Jitter spreads reconnect storms; the cap keeps an outage of hours from growing delays
    without bound; ``reset()`` after a success starts the next outage from the initial delay.
    """

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
        cap = min(self.max_s, self.initial_s * self.factor**self._attempt)
        self._attempt = min(self._attempt + 1, 64)
        return cap / 2 + self._rng.random() * cap / 2

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt


@dataclass(frozen=True, slots=True)
class Decision:
    """``retry``: try again after ``delay_s``; otherwise give up, ``reason`` says why."""

    retry: bool
    delay_s: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` consecutive transient failures (None: no limit) before giving up;
    ``max_retry_after_s`` caps a server's ``Retry-After`` (None: honour it whole), except a
    ``Banned``'s: calling before a ban ends only lengthens it."""

    initial_s: float = 1.0
    max_s: float = 60.0
    factor: float = 2.0
    max_attempts: int | None = None
    max_retry_after_s: float | None = None

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.factor < 1:
            raise ValueError("need 0 < initial_s <= max_s and factor >= 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")

    def backoff(self, rng: random.Random | None = None) -> Backoff:
        return Backoff(self.initial_s, self.max_s, self.factor, rng)

    def decide(self, error: BaseException, backoff: Backoff) -> Decision:
        """What to do after ``error``; a transient one uses up one of ``backoff``'s attempts.

        Anything that is not ``Permanent`` counts as transient: a shell that cannot tell keeps
        trying, within ``max_attempts``.
        """
        if isinstance(error, Permanent):
            return Decision(False, reason="permanent")
        if self.max_attempts is not None and backoff.attempts + 1 >= self.max_attempts:
            return Decision(False, reason=f"gave up after {self.max_attempts} attempts")
        delay = backoff.next_delay()
        asked = error.retry_after_s if isinstance(error, Transient) else None
        if asked is not None:
            if self.max_retry_after_s is not None and not isinstance(error, Banned):
                asked = min(asked, self.max_retry_after_s)  # a ban is never cut short
            delay = asked  # the server said when: neither sooner nor later than that
        return Decision(True, delay)
