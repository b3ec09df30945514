"""Bounded waits, on ``asyncio.timeout``.

``asyncio.wait_for`` in Python 3.11 can swallow a cancellation that lands just as the awaited
thing completes (CPython gh-86296), so a task told to stop carries on. Every bounded wait of the
daemon goes through here instead.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` passes (None: no limit); True if it is set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
