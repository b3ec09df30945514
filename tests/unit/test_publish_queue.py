"""The publish queue's decisions, with no event loop and no broker: drops when full, republishing
each topic's newest payload on a connection, the in-flight window and what a lost connection
costs, and the accounting that ties the counters together."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.core.publish_queue import Pending, PublishQueue, is_publishable_topic


def offer_all(q: PublishQueue, items: str, now: float = 0.0) -> None:
    """Offer ``"a1 b1 a2"``: the first letter is the topic, the word the payload."""
    for word in items.split():
        assert q.offer(word[0], word.encode(), now)


def take_all(q: PublishQueue) -> list[str]:
    """Take and acknowledge (as QoS 0 would) everything the queue hands out."""
    out = []
    while (item := q.take()) is not None:
        q.delivered(item)
        out.append(item.payload.decode())
    return out


@pytest.mark.parametrize("topic", ["", "tc/+/x", "tc/#", "tc/\0", "t" * 65_536, "é" * 32_768])
def test_topics_one_cannot_publish_to_are_refused_and_counted(topic: str) -> None:
    q = PublishQueue(queue_max=3, inflight_max=3)
    assert not is_publishable_topic(topic)
    assert not q.offer(topic, b"x", 0.0)
    assert (q.queued, q.refused_total, q.dropped_total) == (0, 1, 0)
    assert q.requeue_latest(1.0) == 0  # a refused payload is not anyone's newest either


def test_a_topic_of_exactly_the_byte_limit_is_accepted() -> None:
    assert is_publishable_topic("t" * 65_535)
    assert is_publishable_topic("tc/forecast/binance/BTCUSDT")


@pytest.mark.parametrize(
    ("offered", "kept", "dropped"),
    [
        ("b1 a1 a2", ["b1", "a1", "a2"], 0),
        ("b1 a1 a2 a3", ["b1", "a2", "a3"], 1),  # a's oldest goes, not the older b1
        ("b1 a1 a2 c1", ["a1", "a2", "c1"], 1),  # nothing of c queued: the oldest of all goes
        ("b1 a1 a2 a3 c1", ["a2", "a3", "c1"], 2),
    ],
)
def test_full_queue_drops_the_same_topics_oldest_else_the_oldest_of_all(
    offered: str, kept: list[str], dropped: int
) -> None:
    q = PublishQueue(queue_max=3, inflight_max=10)
    offer_all(q, offered)
    assert (q.queued, q.dropped_total) == (3, dropped)
    assert take_all(q) == kept
    assert q.published_total == 3


def test_take_hands_out_oldest_first_with_the_time_it_was_offered() -> None:
    q = PublishQueue(queue_max=10, inflight_max=10)
    q.offer("a", b"a1", 5.0)
    q.offer("b", b"b1", 6.0)
    assert q.take() == Pending("a", b"a1", 5.0)
    assert q.take() == Pending("b", b"b1", 6.0)
    assert q.take() is None


def test_requeue_latest_puts_each_topics_newest_at_the_head_in_first_seen_order() -> None:
    q = PublishQueue(queue_max=10, inflight_max=10)
    offer_all(q, "a1 b1 c1 a2")
    assert take_all(q) == ["a1", "b1", "c1", "a2"]  # all out: the broker has them
    offer_all(q, "b2 d1")  # queued while the broker is away
    assert q.requeue_latest(9.0) == 2  # a and c: b and d have a newer payload waiting
    assert q.republished_total == 2
    head = q.take()
    assert head == Pending("a", b"a2", 9.0)  # the newest of a, stamped with the requeue time
    q.delivered(head)
    assert take_all(q) == ["c1", "b2", "d1"]
    assert q.requeue_latest(10.0) == 4  # every topic's newest, topics in first-seen order
    assert take_all(q) == ["a2", "b2", "c1", "d1"]


def test_the_in_flight_window_holds_back_sends_until_acks_free_room() -> None:
    q = PublishQueue(queue_max=10, inflight_max=2)
    offer_all(q, "a1 b1 c1")
    first, second = q.take(), q.take()
    assert first is not None and second is not None
    q.in_flight(101, first)
    q.in_flight(102, second)
    assert q.take() is None  # two unacknowledged: the third waits
    assert (q.queued, q.inflight, q.idle) == (1, 2, False)
    assert q.acked(999) is None  # not one of ours (the client's own publishes)
    assert q.published_total == 0
    assert q.acked(102) == second  # ACKs may come out of order
    assert q.published_total == 1
    third = q.take()
    assert third is not None and third.payload == b"c1"
    q.in_flight(103, third)
    assert q.acked(101) == first and q.acked(103) == third
    assert q.acked(101) is None  # an ACK counts once
    assert (q.published_total, q.inflight, q.idle) == (3, 0, True)


def test_a_lost_connection_drops_what_was_in_flight_and_the_reconnect_covers_its_topics() -> None:
    q = PublishQueue(queue_max=10, inflight_max=10)
    offer_all(q, "a1 b1 c1")
    for mid in (1, 2):  # a1, b1 sent and unacknowledged
        item = q.take()
        assert item is not None
        q.in_flight(mid, item)
    offer_all(q, "a2")  # queue: c1 a2
    assert q.connection_lost() == 2
    assert (q.dropped_total, q.inflight, q.queued) == (2, 0, 2)
    assert q.acked(1) is None  # a late ACK from the old connection counts for nothing
    # a has a2 waiting and c has c1: only b's newest comes back, ahead of what waits
    assert q.requeue_latest(1.0) == 1
    assert take_all(q) == ["b1", "c1", "a2"]
    assert q.connection_lost() == 0


def test_a_failed_send_is_dropped_and_counted() -> None:
    q = PublishQueue(queue_max=10, inflight_max=10)
    offer_all(q, "a1")
    item = q.take()
    assert item is not None
    q.failed(item)
    assert (q.dropped_total, q.published_total, q.queued, q.inflight) == (1, 0, 0, 0)


def test_drop_queued_counts_and_keeps_each_topics_newest_for_a_reconnect() -> None:
    q = PublishQueue(queue_max=10, inflight_max=10)
    offer_all(q, "a1 b1 a2")
    assert q.drop_queued() == 3
    assert (q.queued, q.dropped_total) == (0, 3)
    assert q.requeue_latest(0.0) == 2
    assert take_all(q) == ["a2", "b1"]


def test_sizes_must_be_at_least_one() -> None:
    with pytest.raises(ValueError):
        PublishQueue(queue_max=0, inflight_max=1)
    with pytest.raises(ValueError):
        PublishQueue(queue_max=1, inflight_max=0)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.sampled_from(["a", "b", "c", "d", "x/+"])),
        st.tuples(st.just("send"), st.booleans()),  # True: QoS 0, out at once
        st.tuples(st.just("ack"), st.integers(0, 12)),
        st.tuples(st.just("fail"), st.none()),
        st.tuples(st.just("lost"), st.none()),
        st.tuples(st.just("requeue"), st.none()),
        st.tuples(st.just("shutdown"), st.none()),
    ),
    max_size=60,
)


@given(ops=OPS, queue_max=st.integers(1, 4), inflight_max=st.integers(1, 3))
def test_every_accepted_payload_is_published_dropped_queued_or_in_flight(
    ops: list[tuple[str, object]], queue_max: int, inflight_max: int
) -> None:
    q = PublishQueue(queue_max, inflight_max)
    accepted, mids = 0, iter(range(1_000))
    for op, arg in ops:
        if op == "offer":
            assert isinstance(arg, str)
            accepted += q.offer(arg, b"p", 0.0)
        elif op in ("send", "fail") and (item := q.take()) is not None:
            if op == "fail":
                q.failed(item)
            elif arg:
                q.delivered(item)
            else:
                q.in_flight(next(mids), item)
        elif op == "ack":
            assert isinstance(arg, int)
            q.acked(arg)
        elif op == "lost":
            q.connection_lost()
        elif op == "requeue":
            q.requeue_latest(0.0)
        elif op == "shutdown":
            q.drop_queued()
        assert q.inflight <= inflight_max
        assert q.queued <= queue_max + 4  # requeue_latest may add one per topic over the bound
        assert accepted + q.republished_total == (
            q.published_total + q.dropped_total + q.queued + q.inflight
        )
