"""What ``streamer.replay.transport`` relies on in websockets, checked over real loopback sockets.

The replay server writes batches of ready-made frames straight to websockets' transport, waits
on its flow control and aborts it. If a websockets release changes any of that (the attributes,
the protocol's state, ``drain()`` blocking on a full buffer, frames written under it staying
valid), these tests fail, before the replay server silently loses or corrupts frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedError
from websockets.protocol import State

from streamer.replay import transport

pytestmark = pytest.mark.integration

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def server_running(handler: Handler) -> AsyncIterator[str]:
    """A websockets server configured as the replay server is (no compression); a failure in
    ``handler`` (which websockets would only log) fails the test."""
    failures: list[BaseException] = []

    async def checked(ws: ServerConnection) -> None:
        try:
            await handler(ws)
        except BaseException as exc:
            failures.append(exc)
            raise

    async with serve(checked, "127.0.0.1", 0, compression=None, close_timeout=2) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    if failures:
        raise failures[0]


def test_frame_headers_follow_rfc_6455_for_every_length_class() -> None:
    assert transport.text_frame("ab") == b"\x81\x02ab"
    assert transport.text_frame("x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert transport.text_frame("x" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")


async def test_batched_frames_arrive_as_messages_and_the_protocol_still_works() -> None:
    texts = ["a", "b" * 200, "c" * 70_000]
    states: list[object] = []

    async def handler(ws: ServerConnection) -> None:
        assert isinstance(ws.transport, asyncio.WriteTransport)
        states.append(ws.protocol.state)
        assert transport.write_frames(ws, b"".join(transport.text_frame(t) for t in texts))
        await transport.drain(ws)
        await ws.send("reply through websockets")  # the protocol object kept no stale state
        await ws.wait_closed()
        assert not transport.write_frames(ws, transport.text_frame("late"))  # closed: no write

    async with server_running(handler) as url, connect(url, max_size=2**20) as client:
        received = [await asyncio.wait_for(client.recv(), 5) for _ in range(len(texts) + 1)]
        assert received == [*texts, "reply through websockets"]
        pong = await client.ping()
        await asyncio.wait_for(pong, 5)
    assert states == [State.OPEN]
    assert client.close_code == 1000  # a clean close handshake after the raw writes


async def test_drain_waits_while_the_reader_does_not_read() -> None:
    frame = transport.text_frame("x" * 60_000)
    count = 400  # 24 MB: far more than the kernel's loopback buffers hold
    drained = asyncio.Event()
    written = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        assert transport.write_frames(ws, frame * count)
        written.set()
        await transport.drain(ws)
        drained.set()
        await ws.wait_closed()

    async with server_running(handler) as url, connect(url, max_queue=1) as client:
        await asyncio.wait_for(written.wait(), 5)
        await asyncio.sleep(0.3)
        assert not drained.is_set()  # flow control: the writer waits for the slow reader
        for _ in range(count):
            assert len(await asyncio.wait_for(client.recv(), 5)) == 60_000
        await asyncio.wait_for(drained.wait(), 5)


async def test_abort_delivers_what_was_written_then_closes_without_a_close_frame() -> None:
    texts = [f"frame {i}" for i in range(1000)]

    async def handler(ws: ServerConnection) -> None:
        assert transport.write_frames(ws, b"".join(transport.text_frame(t) for t in texts))
        await transport.abort([ws], 1.0)
        await ws.wait_closed()

    async with server_running(handler) as url, connect(url, max_queue=None) as client:
        received = [await asyncio.wait_for(client.recv(), 5) for _ in texts]
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(client.recv(), 5)
    assert received == texts
    assert closed.value.rcvd is None  # TCP closed with no close frame
