"""The gap repair queue: due order, retries that let later items go first, permanent failures
set aside and counted, a bound on queued gaps. No event loop: clock readings are passed in."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from streamer.core.repair import RepairQueue
from streamer.core.retry import Permanent, RetryPolicy, Transient
from streamer.core.types import MINUTE_MS

T0 = 1_682_553_600_000  # 2023-04-27T00:00:00Z
SETTLE = 2_000


@dataclass(frozen=True)
class Gap:
    exchange: str
    symbols: tuple[str, ...]
    start_ms: int
    end_ms: int


def gap(minute: int, *symbols: str, minutes: int = 1) -> Gap:
    start = T0 + minute * MINUTE_MS + 12_000
    return Gap("binance", symbols or ("BTCUSDT",), start, start + (minutes - 1) * MINUTE_MS)


def test_an_item_is_due_once_its_last_minute_has_closed_by_the_clock() -> None:
    queue = RepairQueue()
    queue.add(gap(3, "BTCUSDT", minutes=2))  # minutes 3 and 4
    end = T0 + 5 * MINUTE_MS
    assert queue.next_due(end + SETTLE - 1, 0.0, SETTLE) is None
    item = queue.next_due(end + SETTLE, 0.0, SETTLE)
    assert item is not None
    assert (item.symbol, item.start_ms, item.end_ms) == ("BTCUSDT", T0 + 3 * MINUTE_MS, end)
    # the watermark clock has no reading: the feed hands over gaps once they have closed
    assert queue.next_due(None, 0.0, SETTLE) == item


def test_a_gap_is_repaired_once_every_symbol_is_filled() -> None:
    queue = RepairQueue()
    g = gap(1, "BTCUSDT", "ETHUSDT")
    queue.add(g)
    now = T0 + 60 * MINUTE_MS
    first = queue.next_due(now, 0.0, SETTLE)
    assert first is not None and first.symbol == "BTCUSDT"
    assert queue.succeeded(first) is None
    second = queue.next_due(now, 0.0, SETTLE)
    assert second is not None and second.symbol == "ETHUSDT"
    assert queue.succeeded(second) == g
    assert len(queue) == 0 and queue.stats.gaps_repaired == 1


def test_a_transient_failure_waits_its_backoff_while_later_items_go_first() -> None:
    queue = RepairQueue(RetryPolicy(initial_s=5.0, max_s=300.0))
    queue.add(gap(1))
    queue.add(gap(2))
    now = T0 + 60 * MINUTE_MS
    head = queue.next_due(now, 100.0, SETTLE)
    assert head is not None
    decision = queue.failed(head, Transient("503"), 100.0)
    assert decision.retry and 2.5 <= decision.delay_s <= 5.0
    later = queue.next_due(now, 100.0, SETTLE)
    assert later is not None and later.start_ms == T0 + 2 * MINUTE_MS
    assert queue.succeeded(later) is not None
    assert queue.next_due(now, 100.0, SETTLE) is None  # the failed one still waits
    wait = queue.wake_in(now, 100.0, SETTLE)
    assert wait == pytest.approx(decision.delay_s)
    assert queue.next_due(now, 100.0 + decision.delay_s, SETTLE) == head
    assert queue.stats.retries == 1


def test_a_permanent_failure_is_set_aside_and_counted_and_blocks_nothing() -> None:
    queue = RepairQueue()
    g = gap(1, "NOPEUSDT", "BTCUSDT")
    queue.add(g)
    queue.add(gap(2, "BTCUSDT"))
    now = T0 + 60 * MINUTE_MS
    bad = queue.next_due(now, 0.0, SETTLE)
    assert bad is not None and bad.symbol == "NOPEUSDT"
    assert not queue.failed(bad, Permanent("answered HTTP 400"), 0.0).retry
    served = []
    while (item := queue.next_due(now, 0.0, SETTLE)) is not None:
        served.append((item.symbol, item.start_ms))
        queue.succeeded(item)
    assert served == [("BTCUSDT", T0 + MINUTE_MS), ("BTCUSDT", T0 + 2 * MINUTE_MS)]
    stats = queue.stats
    assert (stats.items_set_aside, stats.gaps_partly_repaired, stats.gaps_repaired) == (1, 1, 1)
    assert stats.set_aside_by_exchange == {"binance": 1}


def test_transient_failures_retry_without_end_and_never_faster_than_the_cap() -> None:
    queue = RepairQueue(RetryPolicy(initial_s=5.0, max_s=300.0))
    queue.add(gap(1))
    now_s, clock = 0.0, T0 + 60 * MINUTE_MS
    for _ in range(50):
        item = queue.next_due(clock, now_s, SETTLE)
        assert item is not None
        decision = queue.failed(item, OSError("refused"), now_s)
        assert decision.retry and decision.delay_s <= 300.0
        now_s += decision.delay_s
    assert queue.stats.items_set_aside == 0 and len(queue) == 1


def test_a_full_queue_drops_and_counts_new_gaps_and_keeps_the_first_in_order() -> None:
    queue = RepairQueue(capacity=3)
    gaps = [gap(i) for i in range(5)]
    accepted = [queue.add(g) for g in gaps]
    assert accepted == [True, True, True, False, False]
    assert queue.gaps() == gaps[:3]
    assert queue.stats.gaps_dropped == 2 and queue.stats.dropped_by_exchange == {"binance": 2}


def test_random_outcomes_finish_every_gap_exactly_once() -> None:
    rng = random.Random(5)
    queue = RepairQueue(RetryPolicy(initial_s=1.0, max_s=2.0))
    gaps = [gap(i, *rng.sample(["A", "B", "C", "D"], rng.randint(1, 4))) for i in range(30)]
    for g in gaps:
        queue.add(g)
    now_s, clock = 0.0, T0 + 600 * MINUTE_MS
    while len(queue):
        item = queue.next_due(clock, now_s, SETTLE)
        if item is None:
            wait = queue.wake_in(clock, now_s, SETTLE)
            assert wait is not None
            now_s += wait
            continue
        roll = rng.random()
        if roll < 0.6:
            queue.succeeded(item)
        else:
            queue.failed(item, Transient("x") if roll < 0.8 else Permanent("x"), now_s)
    stats = queue.stats
    assert stats.gaps_repaired + stats.gaps_partly_repaired == len(gaps)
