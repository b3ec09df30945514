"""ISO-8601 UTC times, written and read in one place.

Writing: bar times are whole seconds (``2023-03-16T22:15:00Z``), issue times carry milliseconds
(``2023-03-16T22:16:00.042Z``), registry events microseconds. Reading: any ISO-8601 form that
``datetime.fromisoformat`` takes, ``Z`` included; a time without a zone is UTC, never local time.
The exchanges' own strict parser (``exchanges._common.iso8601_to_ms``) stays with the parsers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache


@lru_cache(maxsize=4096)  # every forecast of a minute shares its bar and issue times
def iso_seconds(ts_ms: int) -> str:
    """``2023-03-16T22:15:00Z`` (the fraction of a second is dropped)."""
    return datetime.fromtimestamp(ts_ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=4096)
def iso_millis(ts_ms: int) -> str:
    """``2023-03-16T22:16:00.042Z``."""
    return f"{iso_seconds(ts_ms)[:-1]}.{ts_ms % 1000:03d}Z"


def iso_now_micros() -> str:
    """The current time as ``2026-12-04T15:01:45.123456Z`` (registry events and manifests)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso_ms(text: str) -> int:
    """Epoch ms of an ISO-8601 time; naive means UTC. Raises ``ValueError`` when unparsable."""
    stamp = datetime.fromisoformat(text.strip())
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return round(stamp.timestamp() * 1000)


def parse_iso_ms_or_none(text: str) -> int | None:
    """``parse_iso_ms``, or None for an empty or unparsable time (optional metadata)."""
    if not text:
        return None
    try:
        return parse_iso_ms(text)
    except ValueError:
        return None
