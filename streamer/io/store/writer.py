"""The asyncio shell of the bar writer: moves the rounds ``streamer.core.write_buffer`` composes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from streamer.core.retry import RetryPolicy, Transient
from streamer.core.types import Bar
from streamer.core.write_buffer import WRITE_POLICY, Outcome, WriteBuffer
from streamer.io.store.base import BarStore

log = logging.getLogger(__name__)


class BufferedBarWriter:
    """Writes closed bars through to a BarStore without ever blocking or failing the caller.

    ``submit`` only appends to a bounded ``WriteBuffer``; ``run`` (a task owned by the app's
    TaskGroup) writes it in order, in rounds of at most ``max_round_bars``, and while the store
    is unavailable (a ``Transient`` error) keeps the bars and retries after the delays of
    ``policy``. A round the store refuses with any other error is dropped and counted. The buffer
    decides what is kept and dropped (see ``streamer.core.write_buffer``).

    The metrics module reads the attributes: ``buffered``, ``dropped_total`` (and
    ``dropped_by_reason``: ``overflow``, ``rejected``), ``write_errors_total``,
    ``last_write_seconds`` and ``connected`` (outcome of the last round or ping).
    """

    def __init__(
        self,
        store: BarStore,
        *,
        max_bars: int = 100_000,
        max_round_bars: int = 10_000,
        policy: RetryPolicy = WRITE_POLICY,
        on_write_latency: Callable[[float], None] | None = None,
    ) -> None:
        if policy.max_attempts is not None:
            raise ValueError("the writer keeps bars until they are written: no max_attempts")
        self._store = store
        self._buffer = WriteBuffer(max_bars, max_round_bars)
        self._policy = policy
        self._backoff = policy.backoff()
        self.on_write_latency = on_write_latency
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()  # one round at a time, from run or flush
        self.last_write_seconds = 0.0
        self.connected = False

    @property
    def buffered(self) -> int:
        return self._buffer.buffered

    @property
    def dropped_total(self) -> int:
        return self._buffer.dropped_total

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        return dict(self._buffer.dropped_by_reason)

    @property
    def write_errors_total(self) -> int:
        return self._buffer.errors_total

    def submit(self, bars: Sequence[Bar]) -> None:
        """Queue closed bars for writing; never blocks, never raises."""
        self._buffer.add(bars)
        if bars:
            self._wakeup.set()

    def submit_repair(self, bars: Sequence[Bar]) -> None:
        """Queue backfilled bars that replace incomplete ones and fill gaps."""
        self._buffer.add(bars, repair=True)
        if bars:
            self._wakeup.set()

    async def run(self) -> None:
        """Write buffered bars as they come, until cancelled."""
        self.connected = await self._store.ping()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._drain()

    async def flush(self, timeout_s: float) -> int:
        """Try to write everything buffered within ``timeout_s``; returns how many bars are left."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._drain()
        except TimeoutError:
            pass
        left = self._buffer.buffered
        if left:
            log.warning("shutdown: %d bars could not be written to the bar store", left)
        return left

    async def _drain(self) -> None:
        while self._buffer.buffered:
            error = await self._write_round()
            if error is None:
                self._backoff.reset()
            else:
                await asyncio.sleep(self._policy.decide(error, self._backoff).delay_s)

    async def _write_round(self) -> Transient | None:
        """Write the buffer's next round; the error if the store was unavailable."""
        async with self._lock:
            round_ = self._buffer.take_round()
            if round_ is None:
                return None
            outcome, error = Outcome.CANCELLED, None
            started = time.perf_counter()
            try:
                if round_.repair:
                    await self._store.repair(round_.bars)
                else:
                    await self._store.write(round_.bars)
                outcome = Outcome.WRITTEN
            except Transient as exc:
                outcome, error = Outcome.UNAVAILABLE, exc
            except Exception:
                # A round the store refuses would block every later bar: drop it, counted.
                outcome = Outcome.REJECTED
                log.exception(
                    "bar store rejected a round of %d bars; dropping it", len(round_.bars)
                )
            finally:
                seconds = time.perf_counter() - started
                outage_changed = self._buffer.finish_round(outcome)
            if outcome is Outcome.UNAVAILABLE:
                if outage_changed:
                    log.warning("bar store unavailable, buffering bars: %s", error)
                self.connected = False
            elif outcome is Outcome.WRITTEN:
                self.last_write_seconds = seconds
                if outage_changed:
                    log.info("bar store reachable again; %d bars still buffered", self.buffered)
                self.connected = True
                if self.on_write_latency is not None:
                    self.on_write_latency(seconds)
            return error
