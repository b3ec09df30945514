"""``tickcast-trainer schedule --every 6h``: retrain in a loop, for systemd without a timer.

Runs are spaced from start to start; a run that fails is logged and the loop carries on (the
streamer keeps serving the last good model). SIGTERM/SIGINT only set a flag: the loop stops
between runs, or at once while it is waiting.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType


def run_every(
    every_s: float,
    job: Callable[[], None],
    stop: threading.Event,
    max_runs: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[int, int]:
    """Run ``job`` every ``every_s`` seconds until ``stop`` is set (or ``max_runs`` runs);
    returns (runs, failures)."""
    if every_s <= 0:
        raise ValueError(f"every={every_s}s must be positive")
    runs = failures = 0
    while not stop.is_set():
        started = time.monotonic()
        runs += 1
        log(f"run {runs} starting")
        try:
            job()
        except Exception:  # a failed run must not end the schedule: log it and wait
            failures += 1
            log(f"run {runs} failed:\n{traceback.format_exc()}")
        if max_runs and runs >= max_runs:
            break
        remaining = every_s - (time.monotonic() - started)
        log(f"next run in {max(remaining, 0):.0f}s")
        stop.wait(max(remaining, 0.0))
    return runs, failures


def stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
