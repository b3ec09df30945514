"""The MQTT publish queue's decisions: what waits, what is dropped, what is sent, what came back.

Sans-I/O: the publisher shell offers payloads, takes the next one to send while the in-flight
window has room, and reports what the broker did with each (``acked``, ``delivered``,
``failed``) and when the connection ended (``connection_lost``). Times are passed in, so the
queue never reads a clock.

- Bounded: when full, the oldest payload of the same topic is dropped (a newer forecast
  supersedes it), else the oldest payload of all. Every drop is counted.
- In flight: at most ``inflight_max`` payloads sent and not yet acknowledged, tracked by the
  client's message id in O(1) per ACK.
- Lost in flight: payloads unacknowledged when the connection drops are counted as dropped,
  not resent as they are; ``requeue_latest`` on the next connection covers their topics.
- Republish latest: the broker may have lost its retained messages while we were away (a
  restart without persistence), so on every connection each topic's newest payload is put back
  at the head of the queue, topics in the order first seen, unless a newer one already waits
  (so the queue may hold up to one payload per topic over ``queue_max`` until drained).

Accounting, at rest (nothing in flight): offers accepted + ``republished_total`` ==
``published_total`` + ``dropped_total`` + ``queued``.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from typing import NamedTuple

MAX_TOPIC_BYTES = 65_535


class Pending(NamedTuple):
    topic: str
    payload: bytes
    enqueued_at: float  # the caller's clock at ``offer``, for the enqueue-to-ACK latency


def is_publishable_topic(topic: str) -> bool:
    """A topic one may publish to: not empty, no wildcards or NUL, at most 65,535 bytes."""
    return (
        bool(topic)
        and not any(c in topic for c in "+#\0")
        and (len(topic.encode()) <= MAX_TOPIC_BYTES)
    )


class PublishQueue:
    """Queued and in-flight payloads of one publisher, with its counters."""

    def __init__(self, queue_max: int, inflight_max: int) -> None:
        if queue_max < 1 or inflight_max < 1:
            raise ValueError("queue_max and inflight_max must be at least 1")
        self.queue_max = queue_max
        self.inflight_max = inflight_max
        self.published_total = 0  # acknowledged (or sent, without an ACK to wait for)
        self.republished_total = 0  # newest-per-topic payloads queued again on connection
        self.dropped_total = 0  # queue full, send failed, lost in flight, dropped at shutdown
        self.refused_total = 0  # offers to a topic one cannot publish to
        self._queue: OrderedDict[int, Pending] = OrderedDict()  # seq -> payload, oldest first
        self._queued_by_topic: dict[str, deque[int]] = {}  # topic -> its seqs, in queue order
        self._inflight: dict[int, Pending] = {}  # message id -> sent, not acknowledged
        self._latest: dict[str, bytes] = {}  # topic -> newest payload, topics in first-seen order
        self._seq = itertools.count()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing waiting for an ACK."""
        return not self._queue and not self._inflight

    def offer(self, topic: str, payload: bytes, now: float) -> bool:
        """Queue ``payload`` for ``topic``, dropping one payload when full; False if refused."""
        if not is_publishable_topic(topic):
            self.refused_total += 1
            return False
        self._latest[topic] = payload
        if len(self._queue) >= self.queue_max:
            self._drop_one(topic)
        seq = next(self._seq)
        self._queue[seq] = Pending(topic, payload, now)
        self._queued_by_topic.setdefault(topic, deque()).append(seq)
        return True

    def _drop_one(self, topic: str) -> None:
        seqs = self._queued_by_topic.get(topic)
        if seqs:
            del self._queue[seqs.popleft()]
            if not seqs:
                del self._queued_by_topic[topic]
        else:
            self._pop_oldest()
        self.dropped_total += 1

    def _pop_oldest(self) -> Pending:
        _, item = self._queue.popitem(last=False)
        seqs = self._queued_by_topic[item.topic]
        seqs.popleft()  # a topic's deque is in queue order, so its head is this item
        if not seqs:
            del self._queued_by_topic[item.topic]
        return item

    def requeue_latest(self, now: float) -> int:
        """On a new connection: each topic's newest payload at the head of the queue (topics in
        first-seen order) unless a newer one is queued; returns how many were requeued."""
        requeued = 0
        for topic, payload in reversed(self._latest.items()):
            if topic in self._queued_by_topic:
                continue
            seq = next(self._seq)
            self._queue[seq] = Pending(topic, payload, now)
            self._queue.move_to_end(seq, last=False)
            self._queued_by_topic[topic] = deque([seq])
            requeued += 1
        self.republished_total += requeued
        return requeued

    def take(self) -> Pending | None:
        """The oldest queued payload, to send now; None when empty or the window is full."""
        if not self._queue or len(self._inflight) >= self.inflight_max:
            return None
        return self._pop_oldest()

    def in_flight(self, mid: int, item: Pending) -> None:
        """``item`` was sent as message ``mid`` and awaits its ACK."""
        self._inflight[mid] = item

    def acked(self, mid: int) -> Pending | None:
        """The payload message ``mid`` carried, now published; None if it is not one of ours."""
        item = self._inflight.pop(mid, None)
        if item is not None:
            self.published_total += 1
        return item

    def delivered(self, item: Pending) -> None:
        """``item`` went out with nothing to acknowledge (QoS 0 written at once)."""
        self.published_total += 1

    def failed(self, item: Pending) -> None:
        """Sending ``item`` failed (the connection is gone): it is dropped."""
        self.dropped_total += 1

    def connection_lost(self) -> int:
        """The connection ended: payloads in flight are dropped; returns how many."""
        lost = len(self._inflight)
        self.dropped_total += lost
        self._inflight.clear()
        return lost

    def drop_queued(self) -> int:
        """Drop everything queued (shutdown); the newest per topic is kept for a reconnect."""
        dropped = len(self._queue)
        self.dropped_total += dropped
        self._queue.clear()
        self._queued_by_topic.clear()
        return dropped
