"""Registry manifests for the registry tests: version ``n`` of a model, dated 2023-05-0``n``.

Each is a whole manifest as the trainer writes it (``trainer.registry.build_manifest``), its
version the date and the first 8 hex digits of the artifact's sha256, so that the versions of
``n`` = 1, 2, 3 sort in that order; the pinball loss improves with ``n``.
"""

from __future__ import annotations

from typing import Any

from trainer.registry import build_manifest, sha256_hex


def dated_manifest(n: int, data: bytes, window: int, horizon: int) -> dict[str, Any]:
    """The manifest of ``data`` as version ``n`` (1-9), for a model of ``window`` and
    ``horizon``."""
    manifest = build_manifest(
        f"2023050{n}T000000Z-{sha256_hex(data)[:8]}",
        data,
        {"window": window, "horizon": horizon, "quantiles": [0.1, 0.5, 0.9], "interval_s": 60},
        {"trained_at": f"2023-05-0{n}T00:00:00Z", "symbols": ["BTCUSDT"]},
        {"mean": {"model": {"pinball_bps": 5.0 - n / 10}}},
        "tickcast test",
        None,
    )
    manifest["created_at"] = f"2023-05-0{n}T00:00:00.000000Z"
    return manifest
