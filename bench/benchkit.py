"""What every benchmark shares: one JSON line per figure, notes on stderr, loopback ports.

A figure line is ``{"bench", "value", "unit", "target", "better"}``; ``make bench`` collects them.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time


def figure(
    bench: str, value: float, unit: str, target: float | None, better: str = "lower"
) -> None:
    """Print one figure; ``better`` is ``"lower"`` or ``"higher"``."""
    line = {"bench": bench, "value": value, "unit": unit, "target": target, "better": better}
    print(json.dumps(line), flush=True)


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 15.0) -> None:
    """Return once something accepts connections on the loopback ``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing on port {port}")
