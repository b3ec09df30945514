"""The replay exchange: recorded real data served over a venue's protocol on loopback.

``ReplayServer`` composes the parts: the ``Timeline`` of all sources and the ``ReplayClock``
(``timeline.py``), the ``Faults`` and ``SentStats`` (``faults.py``), a venue ``Dialect``
(``binance.py``, ``coinbase.py``, ``kraken.py``, ``okx.py``, ``bybit.py``, ``bitstamp.py``:
stream names, event JSON, control messages, heartbeats, REST pages), the REST endpoint
(``rest.py``, aiohttp, on its own port) and, here, the WebSocket side: connections, fan-out,
batching and flow control. Clients find it by ``ws_url`` and ``rest_url``. One server speaks
one venue (``dialect="coinbase"``); run one per venue.

Time. The replay clock maps data time to wall time: ``speed`` data milliseconds per wall
millisecond (60 = one data minute per second); ``speed=0`` sends as fast as the clients read.
Frames are written in batches and each batch waits on websockets' flow control (``drain``), so a
slow reader slows the replay instead of growing memory; one slow reader slows every connection.
The clock never runs ahead of what has been written: ``clock_ms()`` is capped both by the wall
mapping and by the events sent (it may trail the newest sent event by 1 ms). It holds at the
start until the first stream subscription, so a client can backfill over REST first and miss
nothing (``wait_for_subscriber=False`` starts it at once), and it stops at the end of the data.
Connections receive the events from the moment they subscribe on, like a real exchange: what a
client misses while disconnected is gone from the stream and must come from REST. REST serves
every kline before the start too, so a client can warm its windows by backfill and then stream.
With ``loop`` the data repeats, shifted forward in time (and in trade ids) by its span on every
pass.

Heartbeats. A ``Heartbeating`` dialect's heartbeats are due every ``heartbeat_every_ms`` of
replay time, between the events, so a quiet market still sends them; they are not data frames
(not in ``sent``, no faults; counted in ``heartbeats_sent``), and a stalled connection gets none.

Idle clients. A venue that closes a connection whose client has sent nothing for a while
(OKX: 30 s, ``client_idle_timeout_s``) gets that enforced here: only the client's data messages
count, not WebSocket pings; the close uses the venue's ``idle_close`` code and reason and is
counted in ``idle_closes``.

Venue rules. What the dialect's ``rules`` (``VenueRules``) declare is enforced: more than
``max_client_messages_per_s`` messages from a client within a second (pings and pongs included,
``CountingConnection``) close the connection with 1008 (``rate_limit_closes``); connections are
cut at ``max_connection_age_s`` (``connection_age_s`` shortens it; ``age_cuts``); WebSocket
upgrades over ``connection_limit`` are answered 429 (``connection_rate_refusals``); REST requests
over a ``request_limits`` rule get the venue's throttling answer (``request_rates``), and REST
answers report the request weight used this minute and refuse past the limit (``weight``);
``announce_shutdown`` sends the venue's shutdown notice and closes the connections after it.
``rules`` replaces the dialect's (tests: shorter windows).

Faults (``Faults``, settable while running, and CLI flags) drop, stall or refuse connections,
send malformed frames and throttle REST klines, so tests can observe recovery. ``sent`` counts
what was written (trades and exact volume per symbol and per minute) so tests can check that
nothing was lost. ``rest_log`` (arrival time, path, status of every REST request) and
``connection_attempts`` (arrival time of every WebSocket upgrade, refused ones too) let tests
check how a client paced itself.

A client that stops reading for a while and then closes should use ``max_queue=None``: the
websockets client stops reading the socket once ``max_queue`` messages are unread, and then waits
its whole ``close_timeout`` for the server's close frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from streamer.core.timefmt import iso_seconds
from streamer.replay import transport
from streamer.replay.binance import BINANCE
from streamer.replay.bitstamp import BitstampDialect
from streamer.replay.bybit import BybitDialect
from streamer.replay.coinbase import CoinbaseDialect
from streamer.replay.data import Source, TradeRow, load_source
from streamer.replay.dialect import (
    MALFORMED_VARIANTS,
    ControlOutcome,
    Dialect,
    Heartbeating,
    Opening,
)
from streamer.replay.faults import Faults, SentStats
from streamer.replay.kraken import KrakenDialect
from streamer.replay.limits import MessageRate, RequestRate, VenueRules, WeightPerMinute
from streamer.replay.minutes import last_trade_id_before
from streamer.replay.okx import OkxDialect
from streamer.replay.rest import RestLogEntry, RestServer
from streamer.replay.timeline import Event, ReplayClock, Timeline
from streamer.replay.transport import CountingConnection

__all__ = ["DIALECTS", "Faults", "ReplayServer", "SentStats"]  # Faults, SentStats: for imports

# venue name -> its dialect for the replayed symbols (Binance accepts any stream name)
DIALECTS: dict[str, Callable[[Sequence[str]], Dialect]] = {
    "binance": lambda symbols: BINANCE,
    "coinbase": CoinbaseDialect,
    "kraken": KrakenDialect,
    "okx": OkxDialect,
    "bybit": BybitDialect,
    "bitstamp": BitstampDialect,
}

log = logging.getLogger(__name__)

_YIELD_EVERY = 256  # events between forced yields to the loop when nothing else yields
_BATCH_FRAMES = 64  # queued frames that trigger a write
_ABORT_FLUSH_S = 1.0  # how long an abort waits for written frames to reach the kernel
_TICK = 2  # the event kind of a heartbeat tick: after the closes and trades of its millisecond
_HEARTBEAT = "\x00heartbeat"  # the symbol of a queued heartbeat frame
_Tick = tuple[int, int, int, int, None]  # a heartbeat tick, ordered among the timeline's events


@dataclass(eq=False)
class _Client:
    ws: ServerConnection
    framing: int  # index into the dialect's frames of an event
    streams: set[str] = field(default_factory=set)
    stalled_until: float = 0.0  # time.monotonic() deadline
    heard_at: float = 0.0  # time.monotonic() of the client's last message (or of its opening)
    idle_timer: asyncio.TimerHandle | None = None
    last_data_ms: int = -(2**62)  # data time of the last data frame queued to it
    # frames not yet written: (frame, symbol ("" for a malformed one, _HEARTBEAT for a
    # heartbeat), data time, qty or None)
    pending: list[tuple[bytes, str, int, float | None]] = field(default_factory=list)


class ReplayServer:
    """Replay ``sources`` over ``dialect``'s WebSocket (``port``) and REST (``rest_port``).

    ``async with ReplayServer(...) as server`` (or ``await start()``/``await stop()``).
    ``start_ms`` is where streaming begins (floored to the minute; default: the data's first
    minute); REST serves everything before it at once. ``dialect``: a venue name of
    ``DIALECTS`` (``"binance"``, ``"coinbase"``, ``"kraken"``, ``"okx"``, ``"bybit"``,
    ``"bitstamp"``) or a ``Dialect``. ``rules``: what the server enforces instead of the
    dialect's ``rules``; ``connection_age_s`` and ``client_idle_timeout_s`` shorten the venue's
    cut of old connections and its close of connections whose client sent nothing for so long
    (tests).
    """

    def __init__(
        self,
        sources: Sequence[Source | str | Path],
        speed: float = 0.0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rest_port: int = 0,
        start_ms: int | None = None,
        loop: bool = False,
        wait_for_subscriber: bool = True,
        faults: Faults | None = None,
        dialect: Dialect | str = BINANCE,
        rules: VenueRules | None = None,
        connection_age_s: float | None = None,
        client_idle_timeout_s: float | None = None,
    ) -> None:
        self.timeline = Timeline(
            [s if isinstance(s, Source) else load_source(s) for s in sources], start_ms, loop
        )
        self.clock = ReplayClock(self.timeline.start_ms, speed)
        self.sources = self.timeline.sources
        self.speed = speed
        self.loop = loop
        self.first_ms = self.timeline.first_ms  # the data's first minute
        self.end_ms = self.timeline.end_ms  # the end of its last minute
        self.start_ms = self.timeline.start_ms
        self.span_ms = self.timeline.span_ms  # one pass of the loop
        self.host = host
        if isinstance(dialect, str):
            if dialect not in DIALECTS:
                raise ValueError(f"unknown venue {dialect!r} (known: {', '.join(DIALECTS)})")
            dialect = DIALECTS[dialect](list(self.sources))
        self.dialect = dialect
        self.rules = rules = dialect.rules if rules is None else rules
        # the venue's cut of old connections (Binance: 24 h); ``connection_age_s`` shortens it
        self.connection_age_s = connection_age_s or rules.max_connection_age_s
        # the venue's close of a connection whose client has sent nothing for so long (OKX:
        # 30 s); ``client_idle_timeout_s`` shortens it
        self.client_idle_timeout_s = client_idle_timeout_s or rules.client_idle_timeout_s
        self._message_limit = rules.max_client_messages_per_s
        weight_limit = rules.weight_limit_per_minute
        self.weight = None if weight_limit is None else WeightPerMinute(weight_limit)
        self.request_rates = [RequestRate(rule) for rule in rules.request_limits]
        limit = rules.connection_limit
        self._connection_rate = None if limit is None else RequestRate(limit)
        self.connection_rate_refusals = 0  # WebSocket upgrades refused for the venue's rate
        self._closing: set[asyncio.Task[None]] = set()
        self.rate_limit_closes = 0  # connections closed with 1008 for sending too much
        self.age_cuts = 0  # connections cut for their age
        self.idle_closes = 0  # connections closed because their client sent nothing
        self.shutdown_notices = 0
        self.heartbeats_sent = 0
        self.wait_for_subscriber = wait_for_subscriber
        self.faults = faults or Faults()
        self.sent = SentStats()
        self.rest_log: list[RestLogEntry] = []  # every REST request: arrival, path, status
        self.connection_attempts: list[float] = []  # time.monotonic() of every WS upgrade
        self._requested_ports = (port, rest_port)
        self._rest_server = RestServer(dialect, self)
        self._clients: set[_Client] = set()
        self._openings: weakref.WeakKeyDictionary[ServerConnection, Opening] = (
            weakref.WeakKeyDictionary()
        )
        self._subs: dict[str, set[_Client]] = {}
        self._subscribed = asyncio.Event()
        self._refuse_until = 0.0
        self._data_frames = 0  # data frames queued since start (malformed cadence, faults)
        self._queued = 0  # frames queued since the last flush
        self._dirty: list[_Client] = []  # clients with queued frames
        self._server: Server | None = None
        self._engine: asyncio.Task[None] | None = None

    # lifecycle

    async def start(self) -> None:
        ws_port, rest_port = self._requested_ports
        self._server = await serve(
            self._handle,
            self.host,
            ws_port,
            process_request=self._process_request,
            create_connection=CountingConnection,
            compression=None,  # the batched writes send uncompressed frames
            max_size=2**16,
            close_timeout=2,
        )
        try:
            await self._rest_server.start(self.host, rest_port)
        except BaseException:
            self._server.close()
            await self._server.wait_closed()
            raise
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
        await self._rest_server.stop()

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
    def rest_port(self) -> int:
        return self._rest_server.port

    @property
    def ws_url(self) -> str:
        return self._url("ws", self.port)

    @property
    def rest_url(self) -> str:
        return self._url("http", self.rest_port)

    def _url(self, scheme: str, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"{scheme}://{host}:{port}"

    @property
    def finished(self) -> bool:
        return self._engine is not None and self._engine.done()

    @property
    def connection_count(self) -> int:
        return len(self._clients)

    def clock_ms(self) -> int:
        """The replay clock: data time now. It holds at ``start_ms`` until the replay starts,
        never passes what has been sent, and stops at the end of the data."""
        return self.clock.now_ms(time.monotonic())

    # fault actions, for tests to call directly

    async def drop_connections(self, *, close_frame: bool = False, refuse_s: float = 0.0) -> None:
        """Drop every open connection now; then refuse new ones for ``refuse_s`` seconds.

        What was counted as sent is written out first, so ``sent`` stays what clients got."""
        await self._flush(self.clock.position_ms)
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
        await transport.abort([c.ws for c in clients], _ABORT_FLUSH_S)

    async def announce_shutdown(self, close_after_s: float) -> None:
        """The venue's shutdown notice (Binance ``serverShutdown``) on every open connection,
        after what was queued before it; the connections close ``close_after_s`` later."""
        text = self.dialect.shutdown_notice(self.clock_ms())
        if text is None:
            raise ValueError("this venue sends no shutdown notice")
        clients = list(self._clients)
        for client in clients:
            self._write(client)
            with contextlib.suppress(ConnectionClosed):
                await client.ws.send(text)
        self.shutdown_notices += len(clients)

        def close_them() -> None:
            for client in clients:
                self._close(client.ws, 1001, "server shutdown")

        asyncio.get_running_loop().call_later(close_after_s, close_them)

    async def stall_connections(self, seconds: float) -> None:
        """Send no data to the connections open now for ``seconds``; their sockets stay open."""
        await self._flush(self.clock.position_ms)
        until = time.monotonic() + seconds
        for client in self._clients:
            client.stalled_until = until
        log.info("fault: stalling %d connections for %.1f s", len(self._clients), seconds)

    def refuse_connections(self, seconds: float) -> None:
        """Answer WebSocket upgrades with HTTP 503 for ``seconds``."""
        self._refuse_until = time.monotonic() + seconds

    # the engine

    async def _replay(self) -> None:
        """Walk the timeline: wait for each event's wall time, queue its frames to the
        subscribed connections, write them in batches (one socket write per connection per
        batch instead of one per frame: the syscall dominated the cost), and move the clock."""
        if self.wait_for_subscriber:
            await self._subscribed.wait()
        log.info("replay starting at %s, speed %s", iso_seconds(self.start_ms), self.speed or "max")
        clock = self.clock
        clock.start(time.monotonic())
        symbols = list(self.sources)
        channels = [self.dialect.channels(symbol) for symbol in symbols]
        faults = self.faults
        beats = self.dialect if isinstance(self.dialect, Heartbeating) else None
        events: Iterator[Event | _Tick] = self.timeline.events()
        last_ids: dict[str, int] = {}
        if beats is not None:
            events = heapq.merge(events, self._ticks(beats.heartbeat_every_ms))
            for symbol, source in self.sources.items():
                last = last_trade_id_before(source, self.start_ms)
                if last is not None:
                    last_ids[symbol] = last
        for count, (ts, _, index, _, payload) in enumerate(events, start=1):
            if self.speed > 0:
                delay = clock.due_at(ts) - time.monotonic()
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
            if payload is None:  # a heartbeat tick
                assert beats is not None
                self._heartbeats(beats, ts, last_ids)
            elif isinstance(payload, TradeRow):
                symbol = symbols[index]
                if beats is not None:
                    last_ids[symbol] = payload.trade_id
                qty = float(payload.qty)
                for stream, encode_trade in channels[index].trades:
                    subs = self._subs.get(stream)
                    if subs:
                        raw = encode_trade(symbol, payload)
                        await self._fan_out(subs, stream, raw, symbol, ts, qty)
            else:
                symbol = symbols[index]
                for stream, encode_kline in channels[index].klines:
                    subs = self._subs.get(stream)
                    if subs:
                        raw = encode_kline(symbol, payload)
                        await self._fan_out(subs, stream, raw, symbol, ts, None)
            if self._queued >= _BATCH_FRAMES:
                await self._flush(ts - 1)
        await self._flush(self.end_ms)
        log.info("replay finished at %s", iso_seconds(self.end_ms))

    def _ticks(self, every_ms: int) -> Iterator[_Tick]:
        """The heartbeat ticks: every ``every_ms`` from the start to the end of the data (with
        ``loop``, forever)."""
        for seq in itertools.count(1):
            ts = self.start_ms + seq * every_ms
            if not self.loop and ts > self.end_ms:
                return
            yield (ts, _TICK, -1, seq, None)

    def _heartbeats(self, beats: Heartbeating, ts: int, last_ids: dict[str, int]) -> None:
        """Queue the heartbeats due at ``ts`` on every open, not stalled connection."""
        now = time.monotonic()
        for client in self._clients:
            if client.stalled_until and now < client.stalled_until:
                continue
            for text in beats.heartbeats(client.streams, ts, ts - client.last_data_ms, last_ids):
                self._queue(client, transport.text_frame(text), _HEARTBEAT, ts, None)

    def _frames(self, stream: str, raw: str) -> tuple[bytes, ...]:
        """The frames of one event on ``stream``, one per framing."""
        return tuple([transport.text_frame(text) for text in self.dialect.frames(stream, raw)])

    async def _fan_out(
        self, subs: set[_Client], stream: str, raw: str, symbol: str, ts: int, qty: float | None
    ) -> None:
        """Queue one event's frame to each subscriber, applying the per-frame faults."""
        faults = self.faults
        frames = self._frames(stream, raw)
        for client in tuple(subs):
            if client.stalled_until:
                if time.monotonic() < client.stalled_until:
                    self.sent.skipped_stalled += 1
                    continue
                client.stalled_until = 0.0
            self._data_frames += 1
            if faults.malformed_every and self._data_frames % faults.malformed_every == 0:
                variant = self._data_frames // faults.malformed_every % MALFORMED_VARIANTS
                bad = self.dialect.malformed(raw, variant)
                self._queue(client, self._frames(stream, bad)[client.framing], "", ts, None)
            self._queue(client, frames[client.framing], symbol, ts, qty)
            client.last_data_ms = ts
            if (
                faults.drop_after_messages is not None
                and self._data_frames >= faults.drop_after_messages
            ):
                faults.drop_after_messages = None
                await self._fault_drop()
            if (
                faults.stall_after_messages is not None
                and self._data_frames >= faults.stall_after_messages
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
        if not batch or client not in self._clients:
            return
        if not transport.write_frames(client.ws, b"".join([entry[0] for entry in batch])):
            return
        sent = self.sent
        for _, symbol, ts, qty in batch:
            if not symbol:
                sent.malformed += 1
                continue
            if symbol is _HEARTBEAT:
                self.heartbeats_sent += 1
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
                    await transport.drain(client.ws)
                except Exception:  # the connection went away while we waited on it
                    self._forget(client)
        self.clock.advance(position_ms)

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

    def _apply(self, client: _Client, outcome: ControlOutcome) -> None:
        self._subscribe(client, outcome.subscribe)
        self._unsubscribe(client, outcome.unsubscribe)
        if outcome.framing is not None:
            client.framing = outcome.framing

    async def _handle(self, ws: ServerConnection) -> None:
        opening = self._openings.pop(ws, None)
        if opening is None:  # answered 404 at the handshake
            return
        client = _Client(ws, opening.framing)
        self._clients.add(client)
        self.sent.connections += 1
        self._subscribe(client, opening.streams)
        cut = None
        if self.connection_age_s is not None:
            cut = asyncio.get_running_loop().call_later(self.connection_age_s, self._cut, ws)
        if self.client_idle_timeout_s is not None:
            client.heard_at = time.monotonic()
            self._idle_check(client)
        try:
            for text in opening.greeting:
                await ws.send(text)
            async for message in ws:
                client.heard_at = time.monotonic()  # data messages only: pings do not count
                outcome = self.dialect.control(message, client.streams, client.framing)
                self._apply(client, outcome)
                self._write(client)  # frames queued before the request go out before the reply
                for reply in outcome.replies:
                    await ws.send(reply)
        except ConnectionClosed:
            pass
        finally:
            if cut is not None:
                cut.cancel()
            if client.idle_timer is not None:
                client.idle_timer.cancel()
            self._forget(client)

    def _close(self, ws: ServerConnection, code: int, reason: str) -> None:
        """Close ``ws`` with a close frame, from sync code (a timer, a frame hook)."""
        task = asyncio.ensure_future(ws.close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _cut(self, ws: ServerConnection) -> None:
        """The venue's cut of a connection at its maximum age (Binance: 24 h)."""
        if ws.state is State.OPEN:
            self.age_cuts += 1
            self._close(ws, 1000, "connection age limit")

    def _idle_check(self, client: _Client) -> None:
        """Close ``client``'s connection once its client has sent no message for
        ``client_idle_timeout_s`` (the venue's code and reason, ``idle_close``); else look again
        when that could next be."""
        timeout = self.client_idle_timeout_s
        assert timeout is not None
        quiet = time.monotonic() - client.heard_at
        if quiet < timeout:
            loop = asyncio.get_running_loop()
            client.idle_timer = loop.call_later(timeout - quiet, self._idle_check, client)
            return
        if client.ws.state is State.OPEN:
            self.idle_closes += 1
            code, reason = self.rules.idle_close
            self._close(client.ws, code, reason)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Let WebSocket upgrades through, or refuse them (404; 429 over the venue's connection
        limit; 503 while refusing)."""
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return connection.respond(426, "Upgrade Required: REST is served at rest_url\n")
        self.connection_attempts.append(time.monotonic())
        path, _, query = request.path.partition("?")
        opening = self.dialect.open(path, query)
        if opening is None:
            return connection.respond(404, "Not Found\n")
        rate = self._connection_rate
        if rate is not None and not rate.admit(time.monotonic()):
            self.connection_rate_refusals += 1
            return connection.respond(rate.rule.status, "Too Many Requests\n")
        if time.monotonic() < self._refuse_until:
            self.sent.refused += 1
            return connection.respond(503, "Service Unavailable\n")
        self._openings[connection] = opening  # for _handle: a dialect opens each connection once
        if self._message_limit is not None and isinstance(connection, CountingConnection):
            messages = MessageRate(self._message_limit)

            def client_frame(now_s: float) -> None:
                if messages.record(now_s) and connection.state is State.OPEN:
                    self.rate_limit_closes += 1
                    self._close(connection, 1008, "Too many messages")

            connection.on_client_frame = client_frame
        return None
