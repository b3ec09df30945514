"""A hot reload from a contract-1 to a contract-2 model and back, mid-stream, end to end: replay
exchange, streamer, real Redis and real Mosquitto, models swapped through the directory
registry.

Expected: a subscriber receives a schema-valid forecast for every symbol at every minute close,
none missing and none twice, across both swaps; the contract-1 model (a 10-bar window, levels
0.1/0.5/0.9) serves until the contract-2 one (a 20-bar window, seven levels) takes over, which
serves until the rollback. Every contract-2 forecast carries all seven levels and exactly the
values the fixture model gives at that forecast's own bar time (its band widens with the
minute of the week), so the streamer fed each row the open time of its last bar.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures.models import (
    DEFAULT_LEVELS,
    LEVELS_V2,
    expected_output,
    expected_output_v2,
    publish_dir,
)
from support.servers import ServerProcess
from support.streamer import SYMBOLS, KlineReplay, fresh_model, model_registry, scrape
from support.waits import wait_until

from streamer.core.contracts.model import quantile_key
from streamer.core.contracts.mqtt import validate_forecast_payload
from streamer.core.timefmt import iso_seconds, parse_iso_ms
from streamer.core.types import MINUTE_MS

pytestmark = pytest.mark.integration

WINDOW_V1, WINDOW_V2, HORIZON, BAND = 10, 20, 5, 0.002


def values_of(payload: dict[str, Any], levels: tuple[float, ...]) -> np.ndarray:
    """``[horizon, levels]`` of a payload, the median in its place among the levels."""
    columns = [
        payload["median"] if q == 0.5 else payload["quantiles"][quantile_key(q)] for q in levels
    ]
    return np.asarray(columns, dtype=np.float64).T


def model_values(payload: dict[str, Any], contract: int) -> np.ndarray:
    """What the fixture model of ``contract`` gives for this payload's last close and time."""
    bars = np.zeros((1, WINDOW_V2, 5), dtype=np.float32)
    bars[0, -1, 3] = payload["last_close"]  # the fixtures read the last close only
    if contract == 1:
        out = expected_output(bars, HORIZON, DEFAULT_LEVELS, BAND)
    else:
        bar_time_s = np.array([parse_iso_ms(payload["bar_time"]) // 1000], dtype=np.int64)
        out = expected_output_v2(bars, bar_time_s, HORIZON, LEVELS_V2, BAND)
    return np.asarray(out[0], dtype=np.float64)


async def test_a_contract_1_to_2_swap_and_back_misses_no_minute(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    replay = KlineReplay(44, stream_from=24)
    swap_at = replay.at(29, 30_000)
    rollback_at = replay.at(36, 30_000)

    v1 = fresh_model("v1", WINDOW_V1, HORIZON, band=BAND)
    v2 = fresh_model("v2", WINDOW_V2, HORIZON, contract=2, band=BAND)
    registry = model_registry(tmp_path, "v1", v1)

    publishing = replay.publishing(
        redis_server,
        mosquitto_server,
        registry,
        model_poll_s=0.05,
        eval_horizons=[1, 5],
        calibration="off",  # the payloads carry each model's own values, checked exactly
    )
    async with publishing as (subscriber, server, streamer):
        await wait_until(lambda: server.clock_ms() >= swap_at, 30, "minute 29:30")
        publish_dir(registry, "v2", v2)
        await wait_until(lambda: server.clock_ms() >= rollback_at, 30, "minute 36:30")
        (registry / "current").write_text('{"version": "v1"}')  # roll back to contract 1
        last_closed = await replay.forecast_to_the_end(server, subscriber)
        metrics = await scrape(streamer.ops.port)
        watcher = streamer.serving.watcher
        assert watcher is not None
        refusals = dict(watcher.reload_failures_total)

    forecasts = subscriber.forecasts()
    per_symbol: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for payload in forecasts:
        assert validate_forecast_payload(payload) == [], payload
        per_symbol[payload["symbol"]].append(payload)
    # the window was warmed over REST: the first forecast is at the last backfilled minute,
    # then one at every minute close, none missing, none twice, across both swaps
    first_forecast = replay.start - MINUTE_MS
    expected_times = [iso_seconds(t) for t in range(first_forecast, last_closed + 1, MINUTE_MS)]
    for symbol in SYMBOLS:
        payloads = per_symbol[symbol]
        assert [p["bar_time"] for p in payloads] == expected_times, symbol
        versions = [p["model"]["version"] for p in payloads]
        to_v2, back = versions.index("v2"), len(versions) - versions[::-1].index("v2")
        assert 0 < to_v2 < back < len(versions) - 2, versions
        assert versions == ["v1"] * to_v2 + ["v2"] * (back - to_v2) + ["v1"] * (
            len(versions) - back
        )
        for p in payloads:
            contract = 2 if p["model"]["version"] == "v2" else 1
            levels = LEVELS_V2 if contract == 2 else DEFAULT_LEVELS
            assert list(p["quantiles"]) == [quantile_key(q) for q in levels if q != 0.5]
            np.testing.assert_array_equal(values_of(p, levels), model_values(p, contract))
        minutes = {parse_iso_ms(p["bar_time"]) // MINUTE_MS % 10_080 for p in payloads[to_v2:back]}
        assert len(minutes) == back - to_v2  # each contract-2 forecast had its own minute
    assert refusals == {}
    assert metrics["tickcast_model_reloads_total"][()] == 3  # v1, v2, v1 again
    skipped = metrics["tickcast_forecasts_skipped_total"]
    assert skipped[(("reason", "short_window"),)] == skipped[(("reason", "no_model"),)] == 0
