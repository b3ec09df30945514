"""The feed's websockets adapter against the installed websockets: aborting a connection drops
it at once, without a closing handshake. Fails loudly if websockets moves its transport."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedError

from streamer.io.feed_websocket import abort
from streamer.io.waits import wait_event

pytestmark = pytest.mark.integration


async def test_abort_ends_the_receive_loop_at_once_without_a_close_handshake() -> None:
    closed_by_peer = asyncio.Event()

    async def silent_exchange(ws: ServerConnection) -> None:
        await ws.send("hello")
        await ws.wait_closed()
        closed_by_peer.set()

    async with serve(silent_exchange, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        # a close handshake would wait up to close_timeout: abort must not
        async with connect(f"ws://127.0.0.1:{port}", close_timeout=10) as ws:
            assert isinstance(ws.transport, asyncio.Transport), "websockets moved its transport"
            assert await ws.recv() == "hello"
            started = time.monotonic()
            abort(ws)
            with pytest.raises(ConnectionClosedError):
                await ws.recv()
            assert time.monotonic() - started < 1.0
            assert ws.close_code is None or ws.close_code == 1006  # no close frame exchanged
        assert await wait_event(closed_by_peer, 2), "the peer saw the connection go"


def test_abort_says_what_to_update_when_websockets_has_no_transport() -> None:
    class NoTransport:
        pass

    with pytest.raises(RuntimeError, match="feed_websocket"):
        abort(NoTransport())  # type: ignore[arg-type]
