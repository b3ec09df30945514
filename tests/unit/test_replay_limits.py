"""What the replay exchange enforces on clients, decided without sockets."""

from __future__ import annotations

from streamer.replay.limits import MessageRate, RequestLimit, RequestRate, WeightPerMinute


def test_more_than_the_limit_within_any_second_breaks_the_message_rate() -> None:
    rate = MessageRate(5)
    assert not any(rate.record(t) for t in (0.0, 0.2, 0.4, 0.6, 0.8))  # five in a second
    assert rate.record(0.9)  # the sixth within the same second
    paced = MessageRate(5)
    assert not any(paced.record(i / 3) for i in range(30))  # three a second, for ten seconds


def test_weight_is_spent_per_wall_clock_minute_and_refused_over_the_limit() -> None:
    weight = WeightPerMinute(10)
    minute = 60.0 * 29_000_000
    assert weight.spend(4, minute + 1) == (True, 4)
    assert weight.spend(4, minute + 2) == (True, 8)
    assert weight.spend(4, minute + 3) == (False, 8)  # refused, nothing spent
    assert weight.spend(2, minute + 4) == (True, 10)
    assert weight.spend(4, minute + 61) == (True, 4)  # a new minute


def test_a_request_over_the_window_is_refused_and_not_counted() -> None:
    rate = RequestRate(RequestLimit(2, 1.0))
    assert [rate.admit(t) for t in (0.0, 0.1, 0.5)] == [True, True, False]
    assert rate.admit(1.0)  # the first has left the window; the refused one never entered it
    assert not rate.admit(1.05)  # 0.1 and 1.0 are within the second before


def test_a_banning_limit_refuses_everything_until_the_ban_ends() -> None:
    rate = RequestRate(RequestLimit(2, 1.0, status=403, ban_s=10.0))
    assert [rate.admit(t) for t in (0.0, 0.1, 0.2)] == [True, True, False]
    assert not rate.admit(5.0)  # the window is long empty, the ban is not over
    assert not rate.admit(10.1)
    assert rate.admit(10.2)
