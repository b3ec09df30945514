"""The operations endpoint of a running streamer: /metrics, /healthz, /readyz over real HTTP.

The streamer runs against the replay exchange (with malformed frames and a stall injected) and
real Redis, which is stopped part way; the scraped figures must equal what the replay server
says it sent and what the streamer's own parts hold, and the families and their labels must be
exactly the catalogue's (streamer.core.contracts.metrics).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fixtures.metrics import exposed, sample_labels
from fixtures.models import build_model, publish_dir
from prometheus_client.parser import text_string_to_metric_families
from support.servers import ServerProcess
from support.streamer import REPLAY_SPEED, running, settings_for
from support.waits import wait_until

from streamer.app import Streamer
from streamer.core.contracts import metrics as catalogue
from streamer.core.contracts.metrics import CATALOGUE, CATALOGUE_BY_NAME
from streamer.core.types import MINUTE_MS
from streamer.replay.data import bundled_trade_paths, load_source
from streamer.replay.server import Faults, ReplayServer

pytestmark = pytest.mark.integration

MQTT_METRICS = {
    catalogue.MQTT_PUBLISHED,
    catalogue.MQTT_DROPPED,
    catalogue.MQTT_ERRORS,
    catalogue.MQTT_QUEUED,
    catalogue.MQTT_UP,
}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample, keyed by (sample name, labels)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for (n, k), v in samples.items() if n == name}


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_metrics_health_and_readiness_of_a_running_streamer(
    redis_server: ServerProcess, tmp_path: Path
) -> None:
    # 12 minutes of real BTCUSDT trades; a bad frame before every 9th, a stall at minute 1:30
    source = load_source(next(p for p in bundled_trade_paths() if "tardis" in p.name), "BTCUSDT")
    source = dataclasses.replace(source, klines=source.klines[:12])
    stall_at = source.first_open_ms + MINUTE_MS + 30_000
    faults = Faults(malformed_every=9, stall_at_ms=stall_at, stall_s=1.0)
    registry = tmp_path / "models"
    publish_dir(registry, "v1", build_model(version="v1", window=5, horizon=3))
    async with (
        ReplayServer([source], speed=REPLAY_SPEED, faults=faults) as server,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
    ):
        settings = settings_for(
            server,
            ["BTCUSDT"],
            redis_url=redis_server.url,
            stale_feed_s=0.3,
            model_registry=str(registry),
        )
        streamer = Streamer(settings, clock=server.clock_ms)
        async with running(streamer):
            base = f"http://127.0.0.1:{streamer.ops.port}"
            assert await get(session, f"{base}/healthz") == (200, {"status": "ok"})

            async def ready() -> bool:
                return (await get(session, f"{base}/readyz"))[0] == 200

            await wait_until(ready, 5, "/readyz 200: feed connected, Redis up, model loaded")
            status, body = await get(session, f"{base}/readyz")
            assert body == {"ready": True, "checks": {"feeds": True, "store": True, "model": True}}

            stats = streamer.metrics.feeds[0]

            async def reconnected_after_the_stall() -> bool:
                return stats.reconnects["stale"] == 1 and streamer.feeds["binance"].connected

            await wait_until(reconnected_after_the_stall, 10, "a stale reconnect")

            redis_server.stop()

            async def not_ready() -> bool:
                return (await get(session, f"{base}/readyz"))[0] == 503

            await wait_until(not_ready, 10, "/readyz 503 once a Redis write fails")
            status, body = await get(session, f"{base}/readyz")
            assert body == {
                "ready": False,
                "checks": {"feeds": True, "store": False, "model": True},
            }
            assert (await get(session, f"{base}/healthz"))[0] == 200  # alive, just not ready

            await server.wait_finished()
            sent_trades = sum(server.sent.trades.values())

            async def all_trades_counted() -> bool:
                return stats.trades == sent_trades

            await wait_until(all_trades_counted, 5, "every sent trade aggregated")
            status, text = await get(session, f"{base}/metrics")
            samples = parse(text)
            buffered = streamer.writer.buffered
            backfill_requests = streamer.backfills["binance"].requests
            redis_server.start()  # so that the ordered shutdown can drain the buffer

    assert status == 200
    # exactly the catalogue, as it defines each family (no broker here: no MQTT families) ...
    assert exposed(text) == {
        m.name: (m.kind.value, m.help) for m in CATALOGUE if m not in MQTT_METRICS
    }
    # ... and every sample with its family's label names (these labelled ones surely have some)
    labels = sample_labels(text)
    assert {
        "tickcast_trades",
        "tickcast_frames_rejected",
        "tickcast_bars_closed",
        "tickcast_feed_reconnects",
        "tickcast_backfill_requests",
        "tickcast_build_info",
        "tickcast_forecasts_skipped",
        "tickcast_model_info",
    } <= set(labels)
    for name, label_names in labels.items():
        assert label_names == {frozenset(CATALOGUE_BY_NAME[name].labels)}, name

    # trades: exactly what the replay exchange delivered; bad frames by reason, all of them
    assert value(samples, "tickcast_trades_total", exchange="binance") == sent_trades > 300
    rejected = by_label(samples, "tickcast_frames_rejected_total", "reason")
    assert rejected == dict(stats.rejected)
    assert set(rejected) == {"malformed_json", "bad_type", "bad_value"}
    assert sum(rejected.values()) == server.sent.malformed > 50
    # bars: the stall made some incomplete (for backfill), the rest are complete
    bars = by_label(samples, "tickcast_bars_closed_total", "complete")
    assert bars == {"true": stats.bars_complete, "false": stats.bars_incomplete}
    assert bars["true"] >= 3 and bars["false"] >= 1
    assert by_label(samples, "tickcast_feed_reconnects_total", "cause") == {"stale": 1}
    assert value(samples, "tickcast_feed_connections", exchange="binance") == 1
    assert 0 <= value(samples, "tickcast_feed_last_message_age_seconds", exchange="binance") < 5
    # backfill: the start-up minute and the stall's gap, every request accounted for
    requests = by_label(samples, "tickcast_backfill_requests_total", "outcome")
    assert requests["ok"] >= 2 and sum(requests.values()) == backfill_requests
    assert value(samples, "tickcast_backfill_bars_total", exchange="binance") >= 2
    # Redis: rounds written before the stop, then failures and a buffer waiting for it
    assert value(samples, "tickcast_redis_write_seconds_count") >= 3
    assert value(samples, "tickcast_redis_write_seconds_sum") > 0
    assert value(samples, "tickcast_redis_write_errors_total") >= 1
    assert value(samples, "tickcast_redis_buffered_bars") == buffered > 0
    assert value(samples, "tickcast_redis_up") == 0
    # and once Redis was back, the ordered shutdown wrote the buffer out
    assert streamer.writer.buffered == 0 and streamer.writer.dropped_total == 0
