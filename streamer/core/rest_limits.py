"""What an exchange's REST host allows this process now: its IP ban and its request weight.

Binance answers 418 once an IP kept calling after 429s: a ban that escalates from 2 minutes to
3 days, its ``Retry-After`` saying until when. Calling during a ban only lengthens it, so a ban
is never cut short: no request goes to that host until it ends (the WebSocket feed, on another
host, keeps ingesting). Binance also reports the request weight used in the current minute
(``X-MBX-USED-WEIGHT-1M``) against a limit per IP (6000): every backfill task of a process
shares one ``HostLimits``, which holds requests back to the next minute once this process's
share of the limit is spent. Pure: times are passed in (monotonic seconds for the ban, epoch
seconds for the weight minute).
"""

from __future__ import annotations

from dataclasses import dataclass

# a 418 without a readable Retry-After: Binance's shortest ban
DEFAULT_BAN_S = 120.0


@dataclass(frozen=True, slots=True)
class RestWeight:
    """An exchange's request-weight scheme: the response header reporting the weight used this
    minute, the limit per minute and IP, and what one bars request costs."""

    used_header: str
    limit_per_minute: int
    bars_request_cost: int


class HostLimits:
    """The ban and the weight budget of one REST host, shared by every task calling it."""

    def __init__(self, weight: RestWeight | None = None, share: float = 0.5) -> None:
        """``share``: the part of the weight limit this process may use (others may call the
        same host from the same IP: the trainer, another shard)."""
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.weight = weight
        self.budget = None if weight is None else int(weight.limit_per_minute * share)
        self.banned_until_s = 0.0  # monotonic
        self.bans = 0
        self.used_weight = 0
        self._used_minute = -1

    def ban(self, retry_after_s: float | None, now_s: float) -> float:
        """The host banned us (418) for ``retry_after_s`` (uncapped); returns the ban's length."""
        length = DEFAULT_BAN_S if retry_after_s is None else retry_after_s
        self.banned_until_s = max(self.banned_until_s, now_s + length)
        self.bans += 1
        return length

    def banned_for(self, now_s: float) -> float:
        """Seconds left of the ban (0: none)."""
        return max(self.banned_until_s - now_s, 0.0)

    def observe(self, used_header: str | None, epoch_s: float) -> None:
        """Read the weight-used header of a response."""
        if self.weight is None or used_header is None:
            return
        try:
            used = int(used_header)
        except ValueError:
            return
        self.used_weight = used
        self._used_minute = int(epoch_s // 60)

    def weight_wait_s(self, epoch_s: float) -> float:
        """How long the next bars request must wait for the weight budget (0: go now): until
        the next minute once this minute's share is spent."""
        if self.weight is None or self.budget is None:
            return 0.0
        minute = int(epoch_s // 60)
        if minute != self._used_minute:
            return 0.0  # a new minute: its weight starts from nothing
        if self.used_weight + self.weight.bars_request_cost <= self.budget:
            return 0.0
        return (minute + 1) * 60 - epoch_s
