"""The one place that reaches under websockets' connection: batched frame writes, flow control
and abort. ``tests/integration/test_replay_transport.py`` fails loudly if websockets changes any
of what this relies on.

Why: sending each data frame through ``ServerConnection.send`` cost a socket write per frame
and dominated the replay's cost; writing a batch of ready-made frames in one
``transport.write`` gives the measured throughput (bench/bench_ingest_e2e.py). This is sound
because a server's data frames are unmasked and, with compression off, carry no state in
websockets' protocol object; pings, pongs, replies and close frames still go through it, and
``send`` writes a whole frame synchronously, so frames never interleave.

``CountingConnection`` counts every frame a client sends, pings and pongs included (venues limit
them all: Binance closes a connection that sends more than 5 a second), by overriding
``ServerConnection.process_event``, which websockets calls with every frame it reads.

Relied on: ``ServerConnection.process_event(event)`` (a ``Frame`` once the handshake is done),
``ServerConnection.transport`` (an ``asyncio.WriteTransport``: ``write``,
``set_write_buffer_limits``, ``abort``), ``ServerConnection.protocol.state`` and the
connection's ``drain()`` (websockets' flow control: wait while the transport's buffer is over
its high-water mark).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

# the frames a client sends that a venue's message limit counts
_COUNTED = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG})


class CountingConnection(ServerConnection):
    """A server connection that reports each frame the client sends to ``on_client_frame``
    (with its ``time.monotonic()``), for the venue's message-rate limit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_client_frame: Callable[[float], None] | None = None

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode in _COUNTED and self.on_client_frame:
            self.on_client_frame(time.monotonic())
        super().process_event(event)


def text_frame(text: str) -> bytes:
    """One unfragmented, unmasked WebSocket text frame (RFC 6455 section 5.2), as a server
    sends it."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def write_frames(ws: ServerConnection, frames: bytes) -> bool:
    """Write ready-made frames in one go; False (nothing written) unless the connection is
    open."""
    if ws.protocol.state is not State.OPEN:
        return False
    ws.transport.write(frames)
    return True


async def drain(ws: ServerConnection) -> None:
    """Wait until the connection's write buffer is below its high-water mark: a slow reader
    slows the writer instead of growing memory. Raises if the connection went away."""
    await ws.drain()


async def abort(connections: Sequence[ServerConnection], flush_timeout_s: float) -> None:
    """Close the TCP connections with no close frame, once what was written has reached the
    kernel (``abort()`` discards the transport's buffer), waiting at most ``flush_timeout_s``."""
    for ws in connections:
        ws.transport.set_write_buffer_limits(high=0)  # drain() now waits for an empty buffer
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(flush_timeout_s):
            await asyncio.gather(*(ws.drain() for ws in connections), return_exceptions=True)
    for ws in connections:
        ws.transport.abort()
