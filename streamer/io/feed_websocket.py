"""The feed's one use of websockets beyond its documented API: dropping a connection at once.

websockets offers ``close()`` (a closing handshake, up to ``close_timeout``) but no abort. A
stale connection (the exchange silent, maybe gone) and a feed told to stop must not wait for a
handshake, so the feed aborts the connection's TCP transport, which websockets keeps in the
undocumented ``transport`` attribute. tests/integration/test_feed_websocket.py fails if that
changes.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import ClientConnection


def abort(ws: ClientConnection) -> None:
    """Drop the TCP connection now: the receive loop ends with ``ConnectionClosedError``."""
    try:
        transport: asyncio.Transport | None = ws.transport
    except AttributeError as exc:
        raise RuntimeError(
            "websockets' ClientConnection has no transport any more: update"
            " streamer.io.feed_websocket.abort for this websockets version"
        ) from exc
    if transport is not None:
        transport.abort()
