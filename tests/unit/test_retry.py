from __future__ import annotations

import random

import pytest

from streamer.core.retry import (
    Backoff,
    Banned,
    Permanent,
    RetryPolicy,
    Throttled,
    Transient,
    http_failure,
    parse_retry_after,
)


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


def test_permanent_failures_are_never_retried() -> None:
    policy = RetryPolicy()
    decision = policy.decide(Permanent("400 invalid symbol"), policy.backoff())
    assert not decision.retry and decision.reason == "permanent"


def test_transient_failures_back_off_until_the_attempts_are_used_up() -> None:
    policy = RetryPolicy(initial_s=1.0, max_s=4.0, max_attempts=3)
    backoff = policy.backoff(random.Random(1))
    first, second, third = (policy.decide(Transient("down"), backoff) for _ in range(3))
    assert first.retry and 0.5 <= first.delay_s <= 1.0
    assert second.retry and 1.0 <= second.delay_s <= 2.0
    assert not third.retry and third.reason == "gave up after 3 attempts"
    backoff.reset()  # a success in between starts afresh
    assert policy.decide(Transient("down"), backoff).retry


def test_an_error_of_unknown_kind_counts_as_transient() -> None:
    policy = RetryPolicy(max_attempts=None)
    backoff = policy.backoff()
    assert all(policy.decide(OSError("reset"), backoff).retry for _ in range(100))


def test_retry_after_is_honoured_exactly_and_capped_only_when_asked() -> None:
    backoff = Backoff(1.0, 60.0)
    slow_down = Throttled("429", retry_after_s=7200.0)
    assert RetryPolicy().decide(slow_down, backoff).delay_s == 7200.0
    assert RetryPolicy(max_retry_after_s=300.0).decide(slow_down, backoff).delay_s == 300.0
    # an IP ban is never cut short, whatever the cap: calling during it lengthens it
    ban = Banned("418", retry_after_s=3 * 86400.0)
    assert RetryPolicy(max_retry_after_s=300.0).decide(ban, backoff).delay_s == 3 * 86400.0
    # shorter than the backoff would be: the server's word wins, neither sooner nor later
    assert (
        RetryPolicy(initial_s=30.0).decide(Transient("x", retry_after_s=1.0), backoff).delay_s
        == 1.0
    )


@pytest.mark.parametrize(
    ("status", "kind"),
    [(429, Throttled), (418, Banned), (403, Throttled), (500, Transient), (503, Transient),
     (408, Transient), (400, Permanent), (404, Permanent), (401, Permanent)],
)  # fmt: skip
def test_http_statuses_map_onto_the_failure_kinds(status: int, kind: type[Exception]) -> None:
    failure = http_failure(status, f"answered {status}", "3")
    assert type(failure) is kind and str(failure) == f"answered {status}"
    if isinstance(failure, Transient):
        assert failure.retry_after_s == 3.0


def test_retry_after_headers_in_seconds_or_as_an_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    assert parse_retry_after("Tue, 14 Nov 2023 22:15:20 GMT", now_s=now) == 120.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:15:20 GMT") is None  # no clock to compare
