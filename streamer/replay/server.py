"""The replay exchange: recorded real data served over the Binance spot protocol on loopback.

One port serves both the WebSocket streams and the REST endpoints a Binance client uses, so the
streamer runs against it unchanged (``ws_url``/``rest_url`` pointed here):

* WebSocket: raw streams ``/ws/<stream>[/<stream>...]`` and ``/ws`` (then ``SUBSCRIBE``),
  combined streams ``/stream?streams=a/b`` and ``/stream``; methods ``SUBSCRIBE``,
  ``UNSUBSCRIBE``, ``LIST_SUBSCRIPTIONS``, ``SET_PROPERTY``/``GET_PROPERTY`` (``combined``).
  Streams ``<sym>@trade``, ``<sym>@aggTrade`` (one aggTrade per trade: ``a = f = l`` = the trade
  id) and ``<sym>@kline_1m`` (the closed kline, ``x: true``, when its minute ends in replay time).
* REST: ``GET /api/v3/klines`` (Binance semantics, closed minutes only: the server never leaks
  the future), ``/api/v3/ping``, ``/api/v3/time`` (``serverTime`` is the replay clock).

Time. All sources are merged into one timeline ordered by data time. The replay clock maps data
time to wall time: ``speed`` data milliseconds per wall millisecond (60 = one data minute per
second); ``speed=0`` sends as fast as the clients read. Frames are written in batches and each
batch waits on websockets' flow control (``drain``), so a slow reader slows the replay instead of
growing memory; one slow reader slows every connection. The clock never runs ahead of what has
been written: ``clock_ms()`` is capped both by the wall mapping and by the events sent (it may
trail the newest sent event by 1 ms). It holds at the start until the first stream subscription,
so a client can backfill over REST first and miss nothing (``wait_for_subscriber=False`` starts
it at once), and it stops at the end of the data. Connections receive the events from the moment
they subscribe on, like a real exchange: what a client misses while disconnected is gone from
the stream and must come from REST. REST serves every kline before the start too, so a client can
warm its windows by backfill and then stream. With ``loop`` the data repeats, shifted forward in
time (and in trade ids) by its span on every pass.

Faults (``Faults``, settable while running, and CLI flags) drop, stall or refuse connections,
send malformed frames and throttle REST klines, so tests can observe recovery. ``sent`` counts
what was written (trades and exact volume per symbol and per minute) so tests can check that
nothing was lost.

A client that stops reading for a while and then closes should use ``max_queue=None``: the
websockets client stops reading the socket once ``max_queue`` messages are unread, and then waits
its whole ``close_timeout`` for the server's close frame.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from streamer.core.types import MINUTE_MS
from streamer.replay.data import (
    SYNTH_TRADES_PER_MINUTE,
    Kline,
    Source,
    TradeRow,
    bundled_kline_paths,
    load_source,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 9443  # Binance's stream port
REST_DEFAULT_LIMIT = 500
REST_MAX_LIMIT = 1000
_CLOSE = 0  # timeline event priorities: a minute's close sorts before a trade at the same ms
_TRADE = 1
_YIELD_EVERY = 256  # events between forced yields to the loop when nothing else yields
_BATCH_FRAMES = 64  # queued frames that trigger a write
_EXACT_BITS = 1074  # every float is an integer multiple of 2**-1074


def _exact(value: float) -> int:
    """``value * 2**1074`` as an int: sums of these are exact, and rounding once at the end
    (int true division is correctly rounded) gives what ``math.fsum`` gives."""
    numerator, denominator = value.as_integer_ratio()
    return numerator << (_EXACT_BITS - denominator.bit_length() + 1)


def _from_exact(total: int) -> float:
    return total / (1 << _EXACT_BITS)


@dataclass
class Faults:
    """Fault injection, read by the server as it runs; change fields at any time.

    Message counts compare with ``sent.messages`` (data frames sent since start), so to act in
    100 messages from now set ``server.sent.messages + 100``. Data times are replay-clock ms.
    A one-shot trigger clears itself when it fires.
    """

    # drop every connection (one-shot): at this data time, or once sent.messages reaches this
    drop_at_ms: int | None = None
    drop_after_messages: int | None = None
    # True: close with a close frame (1001 going away); False: abort the TCP connection
    drop_with_close_frame: bool = False
    # after a drop, answer WebSocket upgrades with HTTP 503 for this many seconds
    refuse_after_drop_s: float = 0.0
    # stall (one-shot): the connections open at that moment get no data for stall_s seconds,
    # the socket stays open; what they miss is gone (counted in sent.skipped_stalled)
    stall_at_ms: int | None = None
    stall_after_messages: int | None = None
    stall_s: float = 5.0
    # insert one malformed frame before every Nth data frame, cycling through invalid JSON,
    # wrong field types and a NaN price; the good frames are all still sent
    malformed_every: int | None = None
    # the next rest_429 klines requests answer 429, the rest_418 after them 418 (IP ban), both
    # with Retry-After: retry_after_s
    rest_429: int = 0
    rest_418: int = 0
    retry_after_s: int = 1


@dataclass
class SentStats:
    """What the server sent. Data frames are counted per frame delivered: a trade sent on two
    streams or to two connections counts twice. Volumes are exact sums (as ``math.fsum``)."""

    messages: int = 0  # data frames: trade, aggTrade, kline
    trades: Counter[str] = field(default_factory=Counter)  # trade + aggTrade frames per symbol
    klines: Counter[str] = field(default_factory=Counter)  # closed-kline frames per symbol
    malformed: int = 0
    skipped_stalled: int = 0  # data frames not sent because their connection was stalled
    connections: int = 0  # WebSocket connections accepted
    drops: int = 0  # connections dropped by a fault
    refused: int = 0  # upgrades answered 503
    rest_requests: int = 0
    rest_throttled: int = 0  # answered 429 or 418
    _volume: dict[str, int] = field(default_factory=dict)
    _minutes: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def count_trade(self, symbol: str, ts_ms: int, qty: float) -> None:
        exact = _exact(qty)
        self.trades[symbol] += 1
        self._volume[symbol] = self._volume.get(symbol, 0) + exact
        key = (symbol, ts_ms - ts_ms % MINUTE_MS)
        tally = self._minutes.get(key)
        if tally is None:
            self._minutes[key] = [1, exact]
        else:
            tally[0] += 1
            tally[1] += exact

    def volume(self, symbol: str) -> float:
        """Total quantity of the trades sent for ``symbol``, exactly rounded."""
        return _from_exact(self._volume.get(symbol, 0))

    def minutes(self, symbol: str) -> dict[int, tuple[int, float]]:
        """Per minute open time: (trades sent, their exact volume). This is what a client's bar
        for that minute holds if it received every frame once."""
        return {
            minute: (tally[0], _from_exact(tally[1]))
            for (sym, minute), tally in sorted(self._minutes.items())
            if sym == symbol
        }


@dataclass(eq=False)
class _Client:
    ws: ServerConnection
    combined: bool
    streams: set[str] = field(default_factory=set)
    stalled_until: float = 0.0  # time.monotonic() deadline
    # frames not yet written: (frame, symbol or "" for a malformed one, data time, qty or None)
    pending: list[tuple[bytes, str, int, float | None]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Names:
    """Per-symbol stream names, built once."""

    trade: str
    agg: str
    kline: str


_STREAM_KINDS = {"trade": "trade", "aggtrade": "aggTrade", "kline_1m": "kline_1m"}


def normalize_stream(name: str) -> str:
    """``BTCUSDT@aggtrade`` -> ``btcusdt@aggTrade``; unknown kinds pass through lower-cased (they
    are accepted, like Binance does, and never carry data)."""
    symbol, _, kind = name.partition("@")
    return f"{symbol.lower()}@{_STREAM_KINDS.get(kind.lower(), kind.lower())}"


def _trade_json(symbol: str, t: TradeRow) -> str:
    m = "true" if t.buyer_is_maker else "false"
    return (
        f'{{"e":"trade","E":{t.ts_ms},"s":"{symbol}","t":{t.trade_id},"p":"{t.price}",'
        f'"q":"{t.qty}","T":{t.ts_ms},"m":{m},"M":true}}'
    )


def _agg_json(symbol: str, t: TradeRow) -> str:
    m = "true" if t.buyer_is_maker else "false"
    return (
        f'{{"e":"aggTrade","E":{t.ts_ms},"s":"{symbol}","a":{t.trade_id},"p":"{t.price}",'
        f'"q":"{t.qty}","f":{t.trade_id},"l":{t.trade_id},"T":{t.ts_ms},"m":{m},"M":true}}'
    )


def _kline_json(symbol: str, k: Kline) -> str:
    return (
        f'{{"e":"kline","E":{k.open_time_ms + MINUTE_MS},"s":"{symbol}","k":{{'
        f'"t":{k.open_time_ms},"T":{k.close_time_ms},"s":"{symbol}","i":"1m",'
        f'"f":{k.first_trade_id},"L":{k.last_trade_id},"o":"{k.open}","c":"{k.close}",'
        f'"h":"{k.high}","l":"{k.low}","v":"{k.volume}","n":{k.trades},"x":true,'
        f'"q":"{k.quote_volume}","V":"{k.taker_buy_volume}","Q":"{k.taker_buy_quote_volume}",'
        f'"B":"0"}}}}'
    )


def _text_frame(text: str) -> bytes:
    """One unfragmented, unmasked WebSocket text frame (RFC 6455 section 5.2), as a server
    sends it. Written straight to the transport in batches; the protocol object keeps no state
    about sent data frames, and pings, pongs and close frames still go through it."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def _frames(stream: str, raw: str) -> tuple[bytes, bytes]:
    """The frame for raw-stream clients and the one for combined-stream clients."""
    return _text_frame(raw), _text_frame(f'{{"stream":"{stream}","data":{raw}}}')


def _malformed(raw: str, variant: int) -> str:
    """A broken copy of a valid event: 0 invalid JSON, 1 wrong types, 2 NaN price. Ids stay
    the real event's, so a client that remembers an id before validating loses the good frame."""
    if variant == 0:
        return raw[: len(raw) // 2]
    event: dict[str, Any] = json.loads(raw)
    body: dict[str, Any] = event["k"] if event.get("e") == "kline" else event
    if variant == 1:
        for key in ("t", "a", "T", "E"):
            if key in body:
                body[key] = "not-a-number"
        body["p" if "p" in body else "c"] = {"price": 1}
        body["q" if "q" in body else "v"] = None
    else:
        body["p" if "p" in body else "c"] = "NaN"
    return json.dumps(event, separators=(",", ":"))


class ReplayServer:
    """Replay ``sources`` over a Binance-compatible WebSocket + REST server on one port.

    ``async with ReplayServer(...) as server`` (or ``await start()``/``await stop()``).
    ``start_ms`` is where streaming begins (floored to the minute; default: the data's first
    minute); REST serves everything before it at once.
    """

    def __init__(
        self,
        sources: Sequence[Source | str | Path],
        speed: float = 0.0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        start_ms: int | None = None,
        loop: bool = False,
        wait_for_subscriber: bool = True,
        faults: Faults | None = None,
    ) -> None:
        loaded = [s if isinstance(s, Source) else load_source(s) for s in sources]
        if not loaded:
            raise ValueError("no data sources")
        self.sources: dict[str, Source] = {}
        for source in loaded:
            if source.symbol in self.sources:
                raise ValueError(f"two sources for {source.symbol}: give one another symbol")
            self.sources[source.symbol] = source
        if speed < 0 or not math.isfinite(speed):
            raise ValueError(
                f"speed must be a finite number >= 0 (0 = as fast as possible): {speed}"
            )
        self.speed = speed
        self.host = host
        self._requested_port = port
        self.loop = loop
        self.wait_for_subscriber = wait_for_subscriber
        self.faults = faults or Faults()
        self.sent = SentStats()
        self.first_ms = min(s.first_open_ms for s in loaded)  # the data's first minute
        self.end_ms = max(s.end_ms for s in loaded)  # the end of its last minute
        self.start_ms = self.first_ms if start_ms is None else start_ms - start_ms % MINUTE_MS
        if not self.first_ms <= self.start_ms < self.end_ms:
            raise ValueError(
                f"start {_iso(self.start_ms)} is outside the data "
                f"({_iso(self.first_ms)} .. {_iso(self.end_ms)})"
            )
        self.span_ms = self.end_ms - self.start_ms  # one pass of the loop
        self._names = {
            sym: _Names(
                f"{sym.lower()}@trade", f"{sym.lower()}@aggTrade", f"{sym.lower()}@kline_1m"
            )
            for sym in self.sources
        }
        self._clients: set[_Client] = set()
        self._subs: dict[str, set[_Client]] = {}
        self._subscribed = asyncio.Event()
        self._refuse_until = 0.0
        self._wall0: float | None = None  # monotonic time at which the replay clock started
        self._position_ms = self.start_ms  # every event up to this data time has been sent
        self._frames = 0  # data frames queued since start (malformed cadence, message faults)
        self._queued = 0  # frames queued since the last flush
        self._dirty: list[_Client] = []  # clients with queued frames
        self._server: Server | None = None
        self._engine: asyncio.Task[None] | None = None

    # lifecycle

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self._requested_port,
            process_request=self._process_request,
            compression=None,
            max_size=2**16,
            close_timeout=2,
        )
        self._engine = asyncio.create_task(self._replay(), name="replay-engine")

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.cancel()
            try:
                await self._engine
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("replay engine failed")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> ReplayServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_finished(self) -> None:
        """Return once every event has been sent (never, with ``loop``); raise if the replay
        failed."""
        assert self._engine is not None, "start() first"
        await asyncio.shield(self._engine)

    # what clients and tests read

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def ws_url(self) -> str:
        return f"ws://{self._url_host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self._url_host}:{self.port}"

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def finished(self) -> bool:
        return self._engine is not None and self._engine.done()

    @property
    def connection_count(self) -> int:
        return len(self._clients)

    def clock_ms(self) -> int:
        """The replay clock: data time now. It holds at ``start_ms`` until the replay starts,
        never passes what has been sent, and stops at the end of the data."""
        if self._wall0 is None:
            return self.start_ms
        if self.speed == 0:
            return self._position_ms
        wall = self.start_ms + int((time.monotonic() - self._wall0) * self.speed * 1000)
        return min(wall, self._position_ms)

    # fault actions, for tests to call directly

    async def drop_connections(self, *, close_frame: bool = False, refuse_s: float = 0.0) -> None:
        """Drop every open connection now; then refuse new ones for ``refuse_s`` seconds.

        What was counted as sent is written out first, so ``sent`` stays what clients got."""
        await self._flush(self._position_ms)
        clients = list(self._clients)
        for client in clients:
            self._forget(client)
        self.sent.drops += len(clients)
        if refuse_s > 0:
            self.refuse_connections(refuse_s)
        log.info("fault: dropping %d connections (close frame: %s)", len(clients), close_frame)
        if close_frame:
            await asyncio.gather(
                *(c.ws.close(1001, "replay: connection dropped") for c in clients),
                return_exceptions=True,
            )
            return
        # abort() discards the transport's buffer: wait (briefly) until it has reached the kernel
        for client in clients:
            client.ws.transport.set_write_buffer_limits(high=0)  # drain() now waits for empty
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(c.ws.drain() for c in clients), return_exceptions=True), 1.0
            )
        for client in clients:
            client.ws.transport.abort()

    async def stall_connections(self, seconds: float) -> None:
        """Send no data to the connections open now for ``seconds``; their sockets stay open."""
        await self._flush(self._position_ms)
        until = time.monotonic() + seconds
        for client in self._clients:
            client.stalled_until = until
        log.info("fault: stalling %d connections for %.1f s", len(self._clients), seconds)

    def refuse_connections(self, seconds: float) -> None:
        """Answer WebSocket upgrades with HTTP 503 for ``seconds``."""
        self._refuse_until = time.monotonic() + seconds

    # the timeline

    def _source_events(self, index: int, source: Source) -> Iterator[tuple[Any, ...]]:
        first = source.index_at(self.start_ms)
        if first == len(source.klines):
            return
        id_span = self._id_span(source)
        seq = itertools.count()
        for lap in itertools.count() if self.loop else range(1):
            shift_ms, shift_id = lap * self.span_ms, lap * id_span
            for i in range(first, len(source.klines)):
                for trade in source.minute_trades(i):
                    if lap:
                        trade = TradeRow(
                            trade.trade_id + shift_id,
                            trade.ts_ms + shift_ms,
                            trade.price,
                            trade.qty,
                            trade.buyer_is_maker,
                        )
                    yield (trade.ts_ms, _TRADE, index, next(seq), trade)
                kline = _shift_kline(source.klines[i], shift_ms, shift_id)
                yield (kline.open_time_ms + MINUTE_MS, _CLOSE, index, next(seq), kline)

    def _timeline(self) -> Iterator[tuple[Any, ...]]:
        streams = [self._source_events(i, s) for i, s in enumerate(self.sources.values())]
        return streams[0] if len(streams) == 1 else heapq.merge(*streams)

    async def _replay(self) -> None:
        """Walk the timeline: wait for each event's wall time, queue its frames to the
        subscribed connections, write them in batches (one socket write per connection per
        batch instead of one per frame: the syscall dominated the cost), and move the clock."""
        if self.wait_for_subscriber:
            await self._subscribed.wait()
        log.info("replay starting at %s, speed %s", _iso(self.start_ms), self.speed or "max")
        self._wall0 = time.monotonic()
        symbols = list(self.sources)
        faults = self.faults
        for count, (ts, kind, index, _, payload) in enumerate(self._timeline(), start=1):
            if self.speed > 0:
                delay = self._wall0 + (ts - self.start_ms) / self.speed / 1000 - time.monotonic()
                if delay > 0:
                    await self._flush(ts - 1)
                    await asyncio.sleep(delay)
            if count % _YIELD_EVERY == 0:
                await self._flush(ts - 1)
                await asyncio.sleep(0)
            if faults.drop_at_ms is not None and ts >= faults.drop_at_ms:
                faults.drop_at_ms = None
                await self._flush(ts - 1)
                await self._fault_drop()
            if faults.stall_at_ms is not None and ts >= faults.stall_at_ms:
                faults.stall_at_ms = None
                await self._flush(ts - 1)
                await self.stall_connections(faults.stall_s)
            symbol = symbols[index]
            names = self._names[symbol]
            if kind == _TRADE:
                qty = float(payload.qty)
                subs = self._subs.get(names.trade)
                if subs:
                    raw = _trade_json(symbol, payload)
                    await self._fan_out(subs, names.trade, raw, symbol, ts, qty)
                subs = self._subs.get(names.agg)
                if subs:
                    raw = _agg_json(symbol, payload)
                    await self._fan_out(subs, names.agg, raw, symbol, ts, qty)
            else:
                subs = self._subs.get(names.kline)
                if subs:
                    raw = _kline_json(symbol, payload)
                    await self._fan_out(subs, names.kline, raw, symbol, ts, None)
            if self._queued >= _BATCH_FRAMES:
                await self._flush(ts - 1)
        await self._flush(self.end_ms)
        log.info("replay finished at %s", _iso(self.end_ms))

    async def _fan_out(
        self, subs: set[_Client], stream: str, raw: str, symbol: str, ts: int, qty: float | None
    ) -> None:
        """Queue one event's frame to each subscriber, applying the per-frame faults."""
        faults = self.faults
        frames = _frames(stream, raw)
        for client in tuple(subs):
            if client.stalled_until:
                if time.monotonic() < client.stalled_until:
                    self.sent.skipped_stalled += 1
                    continue
                client.stalled_until = 0.0
            self._frames += 1
            if faults.malformed_every and self._frames % faults.malformed_every == 0:
                bad = _malformed(raw, self._frames // faults.malformed_every % 3)
                self._queue(client, _frames(stream, bad)[client.combined], "", ts, None)
            self._queue(client, frames[client.combined], symbol, ts, qty)
            if (
                faults.drop_after_messages is not None
                and self._frames >= faults.drop_after_messages
            ):
                faults.drop_after_messages = None
                await self._fault_drop()
            if (
                faults.stall_after_messages is not None
                and self._frames >= faults.stall_after_messages
            ):
                faults.stall_after_messages = None
                await self.stall_connections(faults.stall_s)

    def _queue(
        self, client: _Client, frame: bytes, symbol: str, ts: int, qty: float | None
    ) -> None:
        if not client.pending:
            self._dirty.append(client)
        client.pending.append((frame, symbol, ts, qty))
        self._queued += 1

    def _write(self, client: _Client) -> None:
        """Write a client's queued frames in one go and count them as sent."""
        batch, client.pending = client.pending, []
        ws = client.ws
        if not batch or client not in self._clients or ws.protocol.state is not State.OPEN:
            return
        ws.transport.write(b"".join([entry[0] for entry in batch]))
        sent = self.sent
        for _, symbol, ts, qty in batch:
            if not symbol:
                sent.malformed += 1
                continue
            sent.messages += 1
            if qty is None:
                sent.klines[symbol] += 1
            else:
                sent.count_trade(symbol, ts, qty)

    async def _flush(self, position_ms: int) -> None:
        """Write the queued frames, wait for the slowest reader (websockets' flow control),
        then let the clock move to ``position_ms``."""
        if self._dirty:
            clients, self._dirty, self._queued = self._dirty, [], 0
            for client in clients:
                self._write(client)
                try:
                    await client.ws.drain()
                except Exception:  # the connection went away while we waited on it
                    self._forget(client)
        self._position_ms = max(self._position_ms, position_ms)

    async def _fault_drop(self) -> None:
        await self.drop_connections(
            close_frame=self.faults.drop_with_close_frame,
            refuse_s=self.faults.refuse_after_drop_s,
        )

    # connections

    def _subscribe(self, client: _Client, streams: list[str]) -> None:
        for stream in streams:
            client.streams.add(stream)
            self._subs.setdefault(stream, set()).add(client)
        if streams:
            self._subscribed.set()

    def _unsubscribe(self, client: _Client, streams: list[str]) -> None:
        for stream in streams:
            client.streams.discard(stream)
            subs = self._subs.get(stream)
            if subs is not None:
                subs.discard(client)

    def _forget(self, client: _Client) -> None:
        self._unsubscribe(client, list(client.streams))
        self._clients.discard(client)

    async def _handle(self, ws: ServerConnection) -> None:
        path, _, query = ws.request.path.partition("?") if ws.request else ("", "", "")
        combined = path.startswith("/stream")
        if combined:
            streams = [s for q in parse_qs(query).get("streams", []) for s in q.split("/") if s]
        else:
            streams = [s for s in path.removeprefix("/ws").split("/") if s]
        client = _Client(ws, combined)
        self._clients.add(client)
        self.sent.connections += 1
        self._subscribe(client, [normalize_stream(s) for s in streams])
        try:
            async for message in ws:
                reply = self._control(client, message)
                self._write(client)  # frames queued before the request go out before the reply
                await ws.send(json.dumps(reply, separators=(",", ":")))
        except ConnectionClosed:
            pass
        finally:
            self._forget(client)

    def _control(self, client: _Client, message: str | bytes) -> dict[str, Any]:
        """Answer one client request the way Binance's stream server does."""
        try:
            request = json.loads(message)
        except ValueError as exc:
            return {"error": {"code": 3, "msg": f"Invalid JSON: {exc}"}, "id": None}
        if not isinstance(request, dict):
            return {"error": {"code": 2, "msg": "Invalid request: expected an object"}, "id": None}
        request_id = request.get("id")
        params = request.get("params", [])
        method = request.get("method")
        if not isinstance(params, list):
            return _error(request_id, 1, "Invalid value type: expected an array for params")
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(p, str) and "@" in p for p in params):
                return _error(request_id, 2, "Invalid request: streams must be '<symbol>@<kind>'")
            streams = [normalize_stream(p) for p in params]
            if method == "SUBSCRIBE":
                self._subscribe(client, streams)
            else:
                self._unsubscribe(client, streams)
            return {"result": None, "id": request_id}
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": sorted(client.streams), "id": request_id}
        if method == "SET_PROPERTY" and len(params) == 2 and params[0] == "combined":
            if not isinstance(params[1], bool):
                return _error(request_id, 1, "Invalid value type: expected Boolean")
            client.combined = params[1]
            return {"result": None, "id": request_id}
        if method == "GET_PROPERTY" and params == ["combined"]:
            return {"result": client.combined, "id": request_id}
        return _error(request_id, 2, f"Invalid request: unknown method or property {method!r}")

    # HTTP: upgrades are let through (or refused), everything else is REST

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._rest(connection, path, query)
        if not (path in ("/ws", "/stream", "/stream/") or path.startswith("/ws/")):
            return connection.respond(404, "Not Found\n")
        if time.monotonic() < self._refuse_until:
            self.sent.refused += 1
            return connection.respond(503, "Service Unavailable\n")
        return None

    def _rest(self, connection: ServerConnection, path: str, query: str) -> Response:
        self.sent.rest_requests += 1
        if path == "/api/v3/ping":
            return _json(connection, 200, {})
        if path == "/api/v3/time":
            return _json(connection, 200, {"serverTime": self.clock_ms()})
        if path != "/api/v3/klines":
            return _json(connection, 404, {"code": -1, "msg": f"Unknown path {path}"})
        faults = self.faults
        if faults.rest_429 > 0 or faults.rest_418 > 0:
            self.sent.rest_throttled += 1
            if faults.rest_429 > 0:
                faults.rest_429 -= 1
                status, msg = (
                    429,
                    "Too many requests; current limit is 6000 request weight per 1 MINUTE.",
                )
            else:
                faults.rest_418 -= 1
                status, msg = 418, "Way too many requests; IP banned."
            response = _json(connection, status, {"code": -1003, "msg": msg})
            response.headers["Retry-After"] = str(faults.retry_after_s)
            return response
        try:
            params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
            body = self._klines(params)
        except _RestError as exc:
            return _json(connection, 400, {"code": exc.code, "msg": exc.msg})
        return _json(connection, 200, body)

    def _klines(self, params: dict[str, str]) -> list[list[int | str]]:
        symbol = params.get("symbol", "")
        if not symbol:
            raise _RestError(
                -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            )
        source = self.sources.get(symbol)
        if source is None:
            raise _RestError(-1121, "Invalid symbol.")
        if params.get("interval") != "1m":
            raise _RestError(-1120, "Invalid interval.")
        start, end = _int_param(params, "startTime"), _int_param(params, "endTime")
        limit = _int_param(params, "limit")
        limit = REST_DEFAULT_LIMIT if limit is None else limit
        if not 1 <= limit <= REST_MAX_LIMIT:
            raise _RestError(-1130, "Data sent for parameter 'limit' is not valid.")
        if start is not None and end is not None and start > end:
            raise _RestError(-1023, "Start time is greater than end time.")
        newest_open = self.clock_ms() - MINUTE_MS  # the last minute that has closed
        high = newest_open if end is None else min(end, newest_open)
        if start is not None:
            klines = list(itertools.islice(self._klines_up(source, start, high), limit))
        else:
            klines = list(itertools.islice(self._klines_down(source, high), limit))[::-1]
        return [k.rest_row() for k in klines]

    def _id_span(self, source: Source) -> int:
        """How far trade ids move on each lap of the loop, so they stay unique and increasing."""
        if source.kind == "klines":
            return self.span_ms // MINUTE_MS * SYNTH_TRADES_PER_MINUTE
        base = source.trades[source.trade_start[source.index_at(self.start_ms)] :]
        return base[-1].trade_id - base[0].trade_id + 1 if base else 1

    def _klines_up(self, source: Source, low: int, high: int) -> Iterator[Kline]:
        """Klines opening in [low, high], oldest first, over the history and every lap."""
        klines, first = source.klines, source.index_at(self.start_ms)
        i = source.index_at(low)
        while i < first and klines[i].open_time_ms <= high:
            yield klines[i]
            i += 1
        id_span = self._id_span(source)
        lap = max(0, (low - self.start_ms) // self.span_ms) if self.loop else 0
        while self.start_ms + lap * self.span_ms <= high and (self.loop or lap == 0):
            shift = lap * self.span_ms
            i = max(first, source.index_at(low - shift))
            while i < len(klines) and klines[i].open_time_ms + shift <= high:
                yield _shift_kline(klines[i], shift, lap * id_span)
                i += 1
            lap += 1

    def _klines_down(self, source: Source, high: int) -> Iterator[Kline]:
        """Klines opening at or before ``high``, newest first."""
        klines, first = source.klines, source.index_at(self.start_ms)
        id_span = self._id_span(source)
        if high >= self.start_ms:
            last_lap = (high - self.start_ms) // self.span_ms if self.loop else 0
            for lap in range(last_lap, -1, -1):
                shift = lap * self.span_ms
                i = min(len(klines), source.index_at(high - shift + 1)) - 1
                while i >= first:
                    yield _shift_kline(klines[i], shift, lap * id_span)
                    i -= 1
        i = min(first, source.index_at(high + 1)) - 1
        while i >= 0:
            yield klines[i]
            i -= 1


class _RestError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


def _int_param(params: dict[str, str], name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if not text.isdigit() or len(text) > 20:
        raise _RestError(
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        )
    return int(text)


def _error(request_id: Any, code: int, msg: str) -> dict[str, Any]:
    return {"error": {"code": code, "msg": msg}, "id": request_id}


def _json(connection: ServerConnection, status: int, payload: Any) -> Response:
    response = connection.respond(status, json.dumps(payload, separators=(",", ":")))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json;charset=UTF-8"
    return response


def _shift_kline(kline: Kline, shift_ms: int, shift_id: int) -> Kline:
    if not shift_ms:
        return kline
    has_ids = kline.first_trade_id >= 0
    return replace(
        kline,
        open_time_ms=kline.open_time_ms + shift_ms,
        first_trade_id=kline.first_trade_id + shift_id if has_ids else -1,
        last_trade_id=kline.last_trade_id + shift_id if has_ids else -1,
    )


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# command line


def parse_data_time(text: str, first_ms: int) -> int:
    """A data time: epoch ms, ISO-8601 (UTC unless it says otherwise), or ``+MINUTES`` after
    the data's first minute."""
    text = text.strip()
    if text.startswith("+"):
        return first_ms + int(float(text[1:]) * MINUTE_MS)
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _speed(text: str) -> float:
    if text.lower() == "max":
        return 0.0
    value = float(text)
    if value < 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"speed must be >= 0 or 'max', not {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``replay-server`` subcommand's options."""
    parser.description = (
        "Replay recorded real market data over the Binance spot WebSocket and REST protocol "
        "(one port). Point the streamer's Binance ws/rest URLs at it. Without --source it "
        "replays the bundled 1-minute klines of BTCUSDT, ETHUSDT and SOLUSDT."
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="[SYMBOL=]PATH",
        help="trade or 1m-kline CSV (.csv or .csv.gz); repeat for several symbols. The symbol "
        "defaults to the file name's first '_'-separated part",
    )
    parser.add_argument(
        "--speed",
        type=_speed,
        default=60.0,
        help="data ms per wall ms (60 = one data minute per second); 0 or 'max' = as fast as "
        "the client reads (default 60)",
    )
    parser.add_argument(
        "--start",
        help="where streaming starts: epoch ms, ISO-8601 UTC, or +MINUTES after the data's "
        "first minute; REST serves everything before it (default: the first minute)",
    )
    parser.add_argument("--loop", action="store_true", help="repeat the data, shifted in time")
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address (default 127.0.0.1, loopback only)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="start the replay clock at once instead of at the first subscription",
    )
    parser.add_argument(
        "--exit-when-done", action="store_true", help="exit once all data has been sent"
    )
    faults = parser.add_argument_group("fault injection (for tests)")
    faults.add_argument("--drop-at", metavar="TIME", help="drop all connections at this data time")
    faults.add_argument(
        "--drop-after-messages", type=int, metavar="N", help="drop once N data frames are sent"
    )
    faults.add_argument(
        "--drop-close-frame",
        action="store_true",
        help="drop with a close frame (default: abort TCP without one)",
    )
    faults.add_argument(
        "--refuse-after-drop", type=float, default=0.0, metavar="S", help="then 503 for S seconds"
    )
    faults.add_argument(
        "--refuse-for", type=float, default=0.0, metavar="S", help="503 upgrades for S s at start"
    )
    faults.add_argument("--stall-at", metavar="TIME", help="stall connections at this data time")
    faults.add_argument(
        "--stall-after-messages", type=int, metavar="N", help="stall once N data frames are sent"
    )
    faults.add_argument("--stall-s", type=float, default=5.0, metavar="S", help="stall length")
    faults.add_argument(
        "--malformed-every", type=int, metavar="N", help="a malformed frame before every Nth"
    )
    faults.add_argument("--rest-429", type=int, default=0, metavar="K", help="next K: HTTP 429")
    faults.add_argument("--rest-418", type=int, default=0, metavar="K", help="then K: HTTP 418")
    faults.add_argument("--retry-after", type=int, default=1, metavar="S", help="Retry-After")


def _source_arg(text: str) -> Source:
    symbol, sep, path = text.partition("=")
    return load_source(path, symbol) if sep else load_source(text)


async def serve_from_args(args: argparse.Namespace) -> None:
    """Run the replay server until cancelled (or, with --exit-when-done, until the data ends)."""
    sources = [_source_arg(s) for s in args.source] or [
        load_source(p) for p in bundled_kline_paths()
    ]
    first = min(s.first_open_ms for s in sources)

    def data_time(text: str | None) -> int | None:
        return None if text is None else parse_data_time(text, first)

    server = ReplayServer(
        sources,
        args.speed,
        host=args.host,
        port=args.port,
        start_ms=data_time(args.start),
        loop=args.loop,
        wait_for_subscriber=not args.no_wait,
        faults=Faults(
            drop_at_ms=data_time(args.drop_at),
            drop_after_messages=args.drop_after_messages,
            drop_with_close_frame=args.drop_close_frame,
            refuse_after_drop_s=args.refuse_after_drop,
            stall_at_ms=data_time(args.stall_at),
            stall_after_messages=args.stall_after_messages,
            stall_s=args.stall_s,
            malformed_every=args.malformed_every,
            rest_429=args.rest_429,
            rest_418=args.rest_418,
            retry_after_s=args.retry_after,
        ),
    )
    async with server:
        if args.refuse_for > 0:
            server.refuse_connections(args.refuse_for)
        log.info(
            "replay server on %s (REST %s): %s from %s to %s, streaming from %s",
            server.ws_url,
            server.rest_url,
            ",".join(server.sources),
            _iso(first),
            _iso(server.end_ms),
            _iso(server.start_ms),
        )
        if args.exit_when_done:
            await server.wait_finished()
        else:
            await asyncio.Event().wait()
