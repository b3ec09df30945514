"""A REST host's ban and weight budget: shared by every backfill task, never cut short."""

from __future__ import annotations

import pytest

from streamer.core.rest_limits import DEFAULT_BAN_S, HostLimits, RestWeight

BINANCE_WEIGHT = RestWeight("X-MBX-USED-WEIGHT-1M", 6000, 2)


def test_a_ban_lasts_as_long_as_the_host_says_and_only_grows() -> None:
    limits = HostLimits()
    assert limits.banned_for(100.0) == 0.0
    assert limits.ban(259_200.0, now_s=100.0) == 259_200.0  # three days: uncapped
    assert limits.banned_for(100.0 + 86_400) == pytest.approx(172_800.0)
    limits.ban(60.0, now_s=200.0)  # a shorter answer later does not shorten it
    assert limits.banned_for(200.0) == pytest.approx(259_100.0)
    assert limits.banned_for(100.0 + 259_200.0) == 0.0
    assert limits.bans == 2


def test_a_ban_without_retry_after_is_the_shortest_binance_ban() -> None:
    limits = HostLimits()
    limits.ban(None, now_s=0.0)
    assert limits.banned_for(0.0) == DEFAULT_BAN_S


def test_the_weight_budget_holds_requests_to_the_next_minute_once_the_share_is_spent() -> None:
    limits = HostLimits(BINANCE_WEIGHT, share=0.5)  # 3000 of the 6000 per minute
    minute = 60.0 * 29_000_000
    assert limits.weight_wait_s(minute + 5) == 0.0  # nothing known yet
    limits.observe("2998", minute + 10)
    assert limits.weight_wait_s(minute + 10) == 0.0  # 2998 + 2 fits
    limits.observe("2999", minute + 20)
    assert limits.weight_wait_s(minute + 20) == pytest.approx(40.0)  # to the next minute
    assert limits.weight_wait_s(minute + 61) == 0.0  # a new minute starts from nothing


def test_unreadable_or_missing_weight_headers_change_nothing() -> None:
    limits = HostLimits(BINANCE_WEIGHT)
    limits.observe(None, 0.0)
    limits.observe("lots", 0.0)
    assert limits.used_weight == 0 and limits.weight_wait_s(1.0) == 0.0
    assert HostLimits(None).weight_wait_s(0.0) == 0.0


def test_share_must_be_a_part_of_the_limit() -> None:
    with pytest.raises(ValueError):
        HostLimits(BINANCE_WEIGHT, share=0.0)
