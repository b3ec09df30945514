"""The bar writer's buffer: round composition, what each outcome keeps or drops, overflow while a
round is in flight, outage transitions. No event loop: the test plays the writer's part.

Bars are Binance USD-M BTCUSDT 1-minute bars of 2020-02-22 00:00-00:11 UTC
(tests/support/bars.py); the property test reuses their prices at later minutes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.bars import BTC_ROWS

from streamer.core.types import MINUTE_MS, Bar
from streamer.core.write_buffer import Outcome, Round, WriteBuffer

ROWS = [row[1:] for row in BTC_ROWS]  # OHLCV and trade count
T0 = BTC_ROWS[0][0]  # 2020-02-22T00:00:00Z


def bar(minute: int) -> Bar:
    return Bar("binance", "BTCUSDT", T0 + minute * MINUTE_MS, *ROWS[minute % len(ROWS)])


BTC = [bar(i) for i in range(len(ROWS))]


def take(buffer: WriteBuffer) -> Round:
    round_ = buffer.take_round()
    assert round_ is not None
    return round_


def test_rounds_are_at_most_max_round_bars_of_one_kind_in_order() -> None:
    buffer = WriteBuffer(max_round_bars=3)
    buffer.add(BTC[0:5])
    buffer.add(BTC[1:3], repair=True)
    buffer.add(BTC[5:6])
    rounds = []
    while (round_ := buffer.take_round()) is not None:
        rounds.append(round_)
        buffer.finish_round(Outcome.WRITTEN)
    assert rounds == [
        Round(False, tuple(BTC[0:3])),
        Round(False, tuple(BTC[3:5])),
        Round(True, tuple(BTC[1:3])),
        Round(False, tuple(BTC[5:6])),
    ]
    assert (buffer.buffered, buffer.dropped_total, buffer.errors_total) == (0, 0, 0)


def test_a_written_round_leaves_the_buffer() -> None:
    buffer = WriteBuffer()
    buffer.add(BTC[0:4])
    assert take(buffer).bars == tuple(BTC[0:4])
    assert buffer.buffered == 4 and buffer.in_flight  # buffered until the outcome is known
    assert buffer.finish_round(Outcome.WRITTEN) is False
    assert buffer.buffered == 0 and not buffer.in_flight
    assert buffer.take_round() is None


@pytest.mark.parametrize("outcome", [Outcome.UNAVAILABLE, Outcome.CANCELLED])
def test_a_round_that_did_not_reach_the_store_is_kept_whole_for_the_next_try(
    outcome: Outcome,
) -> None:
    buffer = WriteBuffer(max_round_bars=3)
    buffer.add(BTC[0:5])
    first = take(buffer)
    buffer.finish_round(outcome)
    assert buffer.buffered == 5 and buffer.dropped_total == 0
    assert take(buffer) == first
    assert buffer.errors_total == (1 if outcome is Outcome.UNAVAILABLE else 0)


def test_a_refused_round_is_dropped_counted_and_later_bars_go_next() -> None:
    buffer = WriteBuffer(max_round_bars=3)
    buffer.add(BTC[0:5])
    take(buffer)
    assert buffer.finish_round(Outcome.REJECTED) is False
    assert buffer.dropped_by_reason == {"overflow": 0, "rejected": 3}
    assert buffer.errors_total == 1
    assert take(buffer).bars == tuple(BTC[3:5])


def test_overflow_evicts_the_oldest_and_counts_them() -> None:
    buffer = WriteBuffer(max_bars=4)
    buffer.add(BTC[0:6])
    assert (buffer.buffered, buffer.dropped_by_reason) == (4, {"overflow": 2, "rejected": 0})
    assert take(buffer).bars == tuple(BTC[2:6])


def test_bars_evicted_from_a_round_in_flight_count_only_if_the_round_fails() -> None:
    buffer = WriteBuffer(max_bars=3)
    buffer.add(BTC[0:3])
    take(buffer)
    buffer.add(BTC[3:5])  # evicts BTC[0] and BTC[1], which are being written
    assert buffer.dropped_total == 0
    buffer.finish_round(Outcome.WRITTEN)
    assert buffer.dropped_total == 0
    assert take(buffer).bars == tuple(BTC[3:5])  # BTC[2] went with the written round
    buffer.finish_round(Outcome.WRITTEN)

    buffer.add(BTC[5:8])
    take(buffer)
    buffer.add(BTC[8:10])  # evicts BTC[5] and BTC[6] from the round in flight
    buffer.finish_round(Outcome.UNAVAILABLE)
    assert buffer.dropped_by_reason == {"overflow": 2, "rejected": 0}
    assert take(buffer).bars == (BTC[7], BTC[8], BTC[9])

    buffer.add(BTC[10:11])  # evicts BTC[7] from this round, which the store then refuses
    buffer.finish_round(Outcome.REJECTED)
    assert buffer.dropped_by_reason == {"overflow": 2, "rejected": 3}
    assert take(buffer).bars == (BTC[10],)


def test_an_outage_starts_with_the_first_unavailable_round_and_ends_with_a_written_one() -> None:
    buffer = WriteBuffer()
    buffer.add(BTC[0:1])
    outcomes = [
        Outcome.UNAVAILABLE,
        Outcome.UNAVAILABLE,
        Outcome.CANCELLED,
        Outcome.WRITTEN,
        Outcome.REJECTED,
        Outcome.WRITTEN,
    ]
    changes = []
    for outcome in outcomes:
        if buffer.take_round() is None:
            buffer.add(BTC[1:2])
            take(buffer)
        changes.append((buffer.finish_round(outcome), buffer.failing))
    assert changes == [
        (True, True),
        (False, True),
        (False, True),
        (True, False),
        (False, False),
        (False, False),
    ]


def test_one_round_at_a_time() -> None:
    buffer = WriteBuffer()
    with pytest.raises(RuntimeError, match="no round"):
        buffer.finish_round(Outcome.WRITTEN)
    buffer.add(BTC[0:2])
    take(buffer)
    with pytest.raises(RuntimeError, match="already in flight"):
        buffer.take_round()


def test_sizes_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="max_bars"):
        WriteBuffer(max_bars=0)
    with pytest.raises(ValueError, match="max_round_bars"):
        WriteBuffer(max_round_bars=0)


OUTCOMES = st.sampled_from(list(Outcome))


@settings(max_examples=300, deadline=None)
@given(
    max_bars=st.integers(1, 8),
    max_round_bars=st.integers(1, 5),
    steps=st.lists(
        st.tuples(
            st.integers(0, 4),  # bars added before the step's round
            st.booleans(),  # as repairs
            st.integers(0, 3),  # bars added while the round is in flight
            OUTCOMES,
        ),
        max_size=12,
    ),
)
def test_every_bar_is_written_once_in_order_dropped_counted_or_still_buffered(
    max_bars: int, max_round_bars: int, steps: list[tuple[int, bool, int, Outcome]]
) -> None:
    buffer = WriteBuffer(max_bars=max_bars, max_round_bars=max_round_bars)
    kinds: dict[int, bool] = {}  # open time -> added as a repair
    written: list[Bar] = []

    def add(n: int, repair: bool) -> None:
        fresh = [bar(len(kinds) + i) for i in range(n)]
        kinds.update((b.open_time_ms, repair) for b in fresh)
        buffer.add(fresh, repair=repair)

    for before, repair, during, outcome in steps:
        add(before, repair)
        round_ = buffer.take_round()
        add(during, not repair)
        assert buffer.buffered <= max_bars
        if round_ is None:
            continue
        assert 1 <= len(round_.bars) <= max_round_bars
        assert {kinds[b.open_time_ms] for b in round_.bars} == {round_.repair}
        buffer.finish_round(outcome)
        if outcome is Outcome.WRITTEN:
            written += round_.bars
        assert len(kinds) == len(written) + buffer.dropped_total + buffer.buffered

    times = [b.open_time_ms for b in written]
    assert times == sorted(set(times))  # in order, none twice
