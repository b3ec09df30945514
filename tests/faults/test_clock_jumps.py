"""Fault: the exchange's clock jumps, so trades arrive minutes late or from the future.

The replay exchange holds back real trades of the recording and delivers them at the wrong
moment, each once, with its true timestamp and id (what a real exchange does when its
matching engine and its stream disagree about time):

* the low trade of minute 23 (23:30) arrives at 26:10: minutes late, its minute long closed;
* the close trade of minute 37 (37:45) arrives at 30:05: 7.7 minutes in the future;
* the close trade of minute 33 (33:45) arrives at 33:44: 1 s early, within the 5 s tolerance.

Expected: the late trade is counted (``late``) and leaves the closed bar alone, and its minute is
fetched again from the exchange's REST bars, which hold it; the future trade is rejected
(``future``) without moving the watermark (no other bar closes early), and its minute is
fetched again once it has closed; the slightly early trade is accepted.

Checked afterwards: every bar the exchange side sent is in Redis exactly once, equal to the
exchange's own bar (no bar corrupted, none left incomplete), and forecasts went on every
minute. (The aggregator's late/future rules alone: tests/unit/test_bars.py.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.faults import FaultRun
from support.servers import ServerProcess
from support.streamer import REPLAY_SPEED, SYMBOLS, kline_sources, model_registry

from streamer.core.bars import SUSPECT_MINUTES_MAX, BarAggregator
from streamer.core.types import MINUTE_MS, Trade
from streamer.replay.binance import COMBINED
from streamer.replay.data import Source, TradeRow
from streamer.replay.server import ReplayServer

pytestmark = pytest.mark.integration


@dataclass
class Misdelivery:
    trade: TradeRow
    deliver_at_ms: int  # replay data time at which it goes out instead
    delivered: bool = False


def trade_frame(symbol: str, t: TradeRow, combined: bool) -> bytes:
    event = {"e": "trade", "E": t.ts_ms, "s": symbol, "t": t.trade_id, "p": t.price,
             "q": t.qty, "T": t.ts_ms, "m": t.buyer_is_maker, "M": True}  # fmt: skip
    payload: Any = {"stream": f"{symbol.lower()}@trade", "data": event} if combined else event
    text = json.dumps(payload, separators=(",", ":")).encode()
    assert 126 <= len(text) < 65536
    # one unmasked text frame with a 16-bit length (RFC 6455 5.2), as the server writes them
    return b"\x81\x7e" + len(text).to_bytes(2, "big") + text


class ClockJumpServer(ReplayServer):
    """The replay exchange delivering some real trades of ``symbol`` at the wrong moment."""

    def __init__(self, sources: list[Source], plan: list[Misdelivery], **kw: Any) -> None:
        super().__init__(sources, **kw)
        self.plan = plan
        self._held = {(m.trade.trade_id, m.trade.ts_ms) for m in plan}

    async def _fan_out(
        self, subs: Any, stream: str, raw: str, symbol: str, ts: int, qty: float | None
    ) -> None:
        for m in self.plan:
            if not m.delivered and ts >= m.deliver_at_ms:
                m.delivered = True
                for client in tuple(self._subs.get(f"{SYMBOLS[0].lower()}@trade", ())):
                    combined = client.framing == COMBINED
                    self._queue(client, trade_frame(SYMBOLS[0], m.trade, combined), "", ts, None)
        if symbol == SYMBOLS[0] and qty is not None:
            event = json.loads(raw)
            if (event["t"], event["T"]) in self._held:
                return  # held back: goes out at its wrong moment instead
        await super()._fan_out(subs, stream, raw, symbol, ts, qty)


async def test_late_and_future_trades_are_counted_and_no_bar_is_corrupted(
    redis_server: ServerProcess, tmp_path: Path
) -> None:
    run = FaultRun(46)
    btc = run.sources[0]

    def trade_at(minute: int, second: int) -> TradeRow:
        (trade,) = [t for t in btc.minute_trades(minute) if t.ts_ms % MINUTE_MS == second * 1000]
        return trade

    late = Misdelivery(trade_at(23, 30), run.at(26, 10_000))
    future = Misdelivery(trade_at(37, 45), run.at(30, 5_000))
    early = Misdelivery(trade_at(33, 45), run.at(33, 44_000))
    server = ClockJumpServer(
        run.sources, [late, future, early], speed=REPLAY_SPEED, start_ms=run.start
    )
    async with (
        server,
        run.streaming(server, redis_server.url, model_registry(tmp_path)) as streamer,
    ):
        stats = streamer.metrics.feeds[0]
        end = await run.finish(
            server, redis_server.url, "every closed minute in Redis, as the exchange's"
        )
        streamer.feeds["binance"].on_clock()  # refresh the counts

    assert late.delivered and future.delivered and early.delivered
    assert stats.dropped["late"] == 1
    assert stats.dropped["future"] == 1
    assert stats.dropped["duplicate"] == 0
    # the early trade counted as accepted: all trades sent, less the late and future one
    assert stats.trades == sum(server.sent.trades.values()) + 3 - 2
    await run.check(redis_server.url, end)


def test_suspect_minutes_are_handed_out_once_closed_once_and_bounded() -> None:
    """The aggregator's side of the repair, pure: which minutes the feed re-fetches."""
    btc = kline_sources(6)[0]
    first = btc.first_open_ms
    rows = [t for i in range(5) for t in btc.minute_trades(i)]

    def trade(row: TradeRow, ts_ms: int | None = None) -> Trade:
        return Trade("binance", "BTCUSDT", row.trade_id, row.ts_ms if ts_ms is None else ts_ms,
                     float(row.price), float(row.qty), "buy")  # fmt: skip

    agg = BarAggregator("binance", grace_ms=2_000, future_tolerance_ms=5_000)
    agg.on_clock(first + 3 * MINUTE_MS + 50_000)  # minutes 0-2 closed (no trades yet)
    for row in rows[12:16]:  # minute 3
        agg.add(trade(row))
    late = trade(rows[5])  # minute 1, closed
    future = trade(rows[16], first + 9 * MINUTE_MS)  # 6 minutes ahead of the clock
    broken = trade(rows[17], first + 40 * 24 * 3_600_000)  # a broken timestamp, days ahead
    assert agg.add(late) == agg.add(future) == agg.add(broken) == []
    assert (agg.late, agg.future) == (1, 2)
    assert agg.take_suspects() == (first + MINUTE_MS, first + MINUTE_MS, frozenset({"BTCUSDT"}))
    assert agg.take_suspects() is None  # handed out once
    agg.on_clock(first + 9 * MINUTE_MS + 2_000)
    assert agg.take_suspects() is None  # minute 9 not closed yet
    agg.on_clock(first + 10 * MINUTE_MS + 2_000)
    assert agg.take_suspects() == (
        first + 9 * MINUTE_MS, first + 9 * MINUTE_MS, frozenset({"BTCUSDT"}),
    )  # fmt: skip
    for i in range(SUSPECT_MINUTES_MAX + 3):  # a flood of late trades, each its own minute
        agg.add(trade(rows[0], first - (i + 1) * MINUTE_MS))
    assert agg.suspects_dropped == 3
    got = agg.take_suspects()
    assert got is not None and got[1] - got[0] == (SUSPECT_MINUTES_MAX - 1) * MINUTE_MS
