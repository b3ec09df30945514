"""The one bounded wait of the tests: poll a condition until it holds or the time is up.

Tests wait on conditions, never on a guessed sleep. A condition may be a plain function or a
coroutine function (a Redis read, an HTTP request); the failure names what was awaited.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

Condition = Callable[[], bool] | Callable[[], Awaitable[bool]]

POLL_S = 0.02


async def wait_until(
    condition: Condition,
    timeout_s: float,
    what: str,
    *,
    task: asyncio.Future[Any] | None = None,
) -> None:
    """Return once ``condition()`` is true; AssertionError after ``timeout_s`` seconds.

    ``task``: what the condition depends on (a watcher, a server loop); if it ends first, its
    exception is raised at once instead of waiting out the timeout.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if task is not None and task.done():
            task.result()  # raises what ended it
            raise AssertionError(f"{task!r} ended while waiting for {what}")
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(POLL_S)
