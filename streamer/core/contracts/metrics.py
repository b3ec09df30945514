"""Every Prometheus metric the streamer exposes, defined once.

Names start with ``tickcast_``, carry their unit as a suffix, and keep label cardinality bounded
(per-symbol labels only on the ``listed`` metrics, for the symbols an operator configures).
Dashboards, alert rules and docs/metrics.md refer to these names; the shells build their
metrics from the definitions here, and tests check that /metrics exposes exactly these and that
docs/metrics.md documents each.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class Metric:
    """``name`` as given to prometheus-client: a counter is exposed as ``name`` + ``_total``."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    @property
    def exposed(self) -> str:
        return f"{self.name}_total" if self.kind is Kind.COUNTER else self.name


C, G, H = Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM
EXCHANGE = ("exchange",)

# feeds
TRADES = Metric("tickcast_trades", C, "Trades accepted into bars", EXCHANGE)
FRAMES_REJECTED = Metric(
    "tickcast_frames_rejected", C, "Frames rejected by the parser", ("exchange", "reason")
)
TRADES_DROPPED = Metric(
    "tickcast_trades_dropped",
    C,
    "Parsed trades dropped (late, duplicate, future, unknown_symbol)",
    ("exchange", "reason"),
)
FEED_RECONNECTS = Metric(
    "tickcast_feed_reconnects", C, "WebSocket reconnects by cause", ("exchange", "cause")
)
BARS_CLOSED = Metric(
    "tickcast_bars_closed", C, "Bars closed by the aggregator", ("exchange", "complete")
)
REPAIRS_DROPPED = Metric(
    "tickcast_repairs_dropped",
    C,
    "Minutes lacking a late or future trade not re-fetched (repair list full)",
    EXCHANGE,
)
FEED_CONNECTIONS = Metric("tickcast_feed_connections", G, "Open WebSocket connections", EXCHANGE)
FEED_LAST_MESSAGE_AGE = Metric(
    "tickcast_feed_last_message_age_seconds",
    G,
    "Seconds since the feed's last WebSocket message",
    EXCHANGE,
)
FEED_LAG = Metric(
    "tickcast_feed_lag_seconds",
    H,
    "Exchange-to-receipt lag: the clock at receipt minus the exchange time of each frame's "
    "newest trade",
    EXCHANGE,
)
KLINE_CROSSCHECK = Metric(
    "tickcast_kline_crosscheck",
    C,
    "Aggregated bars compared with the exchange's own kline (match, mismatch)",
    ("exchange", "result"),
)

# REST backfill and gap repair
BACKFILL_REQUESTS = Metric(
    "tickcast_backfill_requests",
    C,
    "REST backfill requests by outcome (ok, rate_limited, error)",
    ("exchange", "outcome"),
)
BACKFILL_BARS = Metric("tickcast_backfill_bars", C, "Bars fetched over REST backfill", EXCHANGE)
REST_BANNED_UNTIL = Metric(
    "tickcast_rest_banned_until_seconds",
    G,
    "End (epoch seconds) of the exchange REST host's IP ban (HTTP 418); 0 when not banned",
    EXCHANGE,
)
REST_USED_WEIGHT = Metric(
    "tickcast_rest_used_weight",
    G,
    "Request weight the exchange REST host reports used this minute (Binance)",
    EXCHANGE,
)
GAPS_DROPPED = Metric(
    "tickcast_gaps_dropped",
    C,
    "Feed gaps not queued for REST repair (the gap queue was full)",
    EXCHANGE,
)
REPAIRS_GIVEN_UP = Metric(
    "tickcast_repairs_given_up",
    C,
    "Symbols' gap repairs set aside for good (a permanent REST failure, e.g. HTTP 400)",
    EXCHANGE,
)

# Redis
REDIS_BUFFERED_BARS = Metric(
    "tickcast_redis_buffered_bars", G, "Closed bars waiting to be written to Redis"
)
REDIS_DROPPED_BARS = Metric(
    "tickcast_redis_dropped_bars", C, "Bars dropped because the Redis buffer overflowed"
)
REDIS_WRITE_ERRORS = Metric("tickcast_redis_write_errors", C, "Failed Redis write rounds")
REDIS_UP = Metric("tickcast_redis_up", G, "1 when the last Redis round succeeded")
REDIS_WRITE_SECONDS = Metric(
    "tickcast_redis_write_seconds",
    H,
    "Latency of one Redis write round (all symbols closing together)",
)

# forecasts and the model
BUILD_INFO = Metric("tickcast_build_info", G, "Streamer version", ("version",))
INFERENCE_SECONDS = Metric(
    "tickcast_inference_seconds", H, "One batched onnxruntime call at a minute close"
)
CLOSE_TO_PUBLISH_SECONDS = Metric(
    "tickcast_close_to_publish_seconds",
    H,
    "From a bar's close to its forecast acknowledged by the broker (or printed)",
)
FORECASTS_PUBLISHED = Metric(
    "tickcast_forecasts_published", C, "Forecasts handed to the sink (MQTT or console)"
)
FORECASTS_SKIPPED = Metric(
    "tickcast_forecasts_skipped",
    C,
    "Symbols due at a minute close but not forecast, by reason",
    ("reason",),
)
MODEL_LOADED = Metric("tickcast_model_loaded", G, "1 while a model serves")
MODEL_INFO = Metric("tickcast_model_info", G, "The serving model", ("version", "trained_at"))
MODEL_AGE = Metric("tickcast_model_age_seconds", G, "Seconds since the model trained")
MODEL_STALE = Metric("tickcast_model_stale", G, "1 when forecasts are marked stale")
MODEL_RELOADS = Metric("tickcast_model_reloads", C, "Models swapped in")
MODEL_RELOAD_FAILURES = Metric(
    "tickcast_model_reload_failures",
    C,
    "Candidate models refused (the old one kept serving), by reason",
    ("reason",),
)
MODEL_REGISTRY_ERRORS = Metric(
    "tickcast_model_registry_errors", C, "Failed reads of the model registry"
)

# online evaluation, per horizon (minutes), across symbols
HORIZON = ("horizon",)
ONLINE_SKILL = Metric(
    "tickcast_online_skill", G, "1 - model MAE / persistence MAE (rolling)", HORIZON
)
ONLINE_MAE = Metric("tickcast_online_mae_bps", G, "Model median MAE, basis points", HORIZON)
ONLINE_PERSISTENCE_MAE = Metric(
    "tickcast_online_persistence_mae_bps",
    G,
    "Persistence ('price stays') MAE, basis points",
    HORIZON,
)
ONLINE_COVERAGE = Metric(
    "tickcast_online_coverage_ratio", G, "Share inside the outer interval", HORIZON
)
ONLINE_PINBALL = Metric(
    "tickcast_online_pinball_bps", G, "Mean pinball loss, basis points", HORIZON
)
ONLINE_SCORED = Metric(
    "tickcast_online_scored", G, "Forecasts scored in the rolling window", HORIZON
)

# online calibration of the published band, per horizon (minutes), across symbols: "raw" is
# the model's band, "calibrated" the calibrated one (computed even while it is not published)
CALIBRATION_ENABLED = Metric(
    "tickcast_calibration_enabled", G, "1 when the published band is the calibrated one"
)
CALIBRATION_COVERAGE = Metric(
    "tickcast_calibration_coverage_ratio",
    G,
    "Share of realised forecasts inside the 0.1-0.9 interval, raw and calibrated band (rolling)",
    ("horizon", "band"),
)
CALIBRATION_BELOW = Metric(
    "tickcast_calibration_below_ratio",
    G,
    "Share of realised forecasts at or below each quantile, raw and calibrated band (rolling)",
    ("horizon", "quantile", "band"),
)
CALIBRATION_REALISED = Metric(
    "tickcast_calibration_realised",
    G,
    "Realised forecasts in the calibration's rolling window",
    HORIZON,
)

# per listed symbol
PRICE_CLOSE = Metric(
    "tickcast_price_close", G, "Close of the last closed bar", ("exchange", "symbol")
)
FORECAST_PRICE = Metric(
    "tickcast_forecast_price",
    G,
    "Latest forecast close at a quantile and horizon (minutes), issued a horizon ago "
    "for comparison with tickcast_price_close",
    ("exchange", "symbol", "horizon", "quantile"),
)
FORECAST_BAR_TIME = Metric(
    "tickcast_forecast_bar_time_seconds",
    G,
    "Open time of the bar the latest forecast was made at",
    ("exchange", "symbol"),
)

# MQTT
MQTT_PUBLISHED = Metric("tickcast_mqtt_published", C, "Messages acknowledged by the broker")
MQTT_DROPPED = Metric(
    "tickcast_mqtt_dropped", C, "Messages dropped (queue full, or cut off unacknowledged)"
)
MQTT_ERRORS = Metric(
    "tickcast_mqtt_errors", C, "Failed connects, lost connections, failed publishes"
)
MQTT_QUEUED = Metric("tickcast_mqtt_queued_messages", G, "Messages waiting to be published")
MQTT_UP = Metric("tickcast_mqtt_up", G, "1 while connected to the broker")

CATALOGUE: tuple[Metric, ...] = tuple(v for v in tuple(globals().values()) if isinstance(v, Metric))
CATALOGUE_BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOGUE}
