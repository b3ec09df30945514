"""Every metric the dashboard and the rules use is exposed by a running streamer's /metrics.

A real Streamer runs on the replay exchange with real Redis (bars and the model registry, as
under Kubernetes) and real Mosquitto, so the MQTT and Redis families exist; a truncated model
is published mid-stream so that the reload-failure counter has a sample. Once forecasts have
been published and scored, /metrics is scraped and compared with the names the PromQL
expressions of deploy/grafana and deploy/prometheus use.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from fixtures.models import build_model, publish_redis
from prometheus_client.parser import text_string_to_metric_families
from promql_names import (
    dashboard_expressions,
    exposed_names,
    metric_names,
    recorded_names,
    rule_expressions,
)
from support.servers import ServerProcess
from support.streamer import REPLAY_SPEED, SYMBOLS, http_get, kline_sources, running, settings_for
from support.waits import wait_until

from streamer.app import Streamer
from streamer.core.types import MINUTE_MS
from streamer.replay.server import ReplayServer

WINDOW, HORIZON = 10, 15


def test_recorded_series_used_are_defined() -> None:
    from promql_names import rules

    defined = {rule["record"] for rule in rules() if "record" in rule}
    used = recorded_names(rule_expressions() + dashboard_expressions())
    assert used, "the alerts are expected to read at least one recorded series"
    assert sorted(used - defined) == []


def _values(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def _flowed(values: dict[str, list[tuple[dict[str, str], float]]]) -> bool:
    """Forecasts published to the broker and scored, and the bad model refused."""

    def total(name: str) -> float:
        return sum(v for _, v in values.get(name, []))

    return (
        total("tickcast_forecasts_published_total") > 0
        and total("tickcast_mqtt_published_total") > 0
        and total("tickcast_close_to_publish_seconds_count") > 0
        and total("tickcast_online_scored") > 0
        and total("tickcast_model_reload_failures_total") > 0
        and "tickcast_feed_last_message_age_seconds" in values
    )


@pytest.mark.integration
async def test_dashboard_and_rules_metrics_are_exposed(
    redis_server: ServerProcess, mosquitto_server: ServerProcess
) -> None:
    sources = kline_sources(45)
    first = sources[0].first_open_ms
    start = first + 20 * MINUTE_MS
    bad_model_at = first + 26 * MINUTE_MS
    trained_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    model = build_model(version="v1", window=WINDOW, horizon=HORIZON, trained_at=trained_at)
    client = aioredis.from_url(redis_server.url)
    await publish_redis(client, "v1", model)

    async with ReplayServer(sources, speed=REPLAY_SPEED, start_ms=start) as server:
        settings = settings_for(
            server,
            list(SYMBOLS),
            redis_url=redis_server.url,
            mqtt_url=mosquitto_server.url,
            model_registry=redis_server.url,
            model_poll_s=0.05,
            eval_horizons=[1, 5, 15],
        )
        streamer = Streamer(settings, clock=server.clock_ms)
        async with running(streamer):
            await wait_until(lambda: server.clock_ms() >= bad_model_at, 30, "minute 26")
            await publish_redis(client, "v2", model, model_bytes=model[: len(model) // 2])
            text = ""

            async def flowed() -> bool:
                nonlocal text
                status, text = await http_get(streamer.ops.port, "/metrics")
                return status == 200 and _flowed(_values(text))

            await wait_until(flowed, 60, "forecasts published and scored, a refusal counted")
    await client.aclose()

    exposed = exposed_names(text)
    dashboard = metric_names(dashboard_expressions())
    alerts = metric_names(rule_expressions())
    assert len(dashboard) >= 25 and len(alerts) >= 10  # the extraction found the queries
    assert sorted(dashboard - exposed) == []
    assert sorted(alerts - exposed) == []

    values = _values(text)
    # the dashboard's default variable values exist as label values
    forecast_labels = [labels for labels, _ in values["tickcast_forecast_price"]]
    assert {labels["quantile"] for labels in forecast_labels} == {"0.1", "0.5", "0.9"}
    assert {labels["horizon"] for labels in forecast_labels} == {"1", "5", "15"}
    assert {labels["symbol"] for labels in forecast_labels} == set(SYMBOLS)
    assert values["tickcast_redis_up"] == [({}, 1.0)]
    assert values["tickcast_mqtt_up"] == [({}, 1.0)]
    assert [labels["version"] for labels, _ in values["tickcast_model_info"]] == ["v1"]
