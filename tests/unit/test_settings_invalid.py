"""Every setting, given an invalid value, stops start-up with a SettingsError that names its key.

The cases are keyed by ``Settings.model_fields``: a field added without an invalid case here
fails ``test_every_field_has_an_invalid_case``, so the table cannot fall behind the settings.
Values go in as the operator gives them, as ``TICKCAST_*`` strings; the error must name the
environment variable. (tests/unit/test_settings.py covers valid values, unknown keys and TOML.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.cli import run_cli

from streamer.settings import Settings, SettingsError, load_settings

# field -> invalid values, as environment strings. Several per field where the kinds differ.
INVALID: dict[str, list[str]] = {
    "symbols": ["", "BTCUSDT", "nasdaq:AAPL", "kraken:BTC/USD", "binance:BTCUSDT,binance:btcusdt"],
    "binance_channels": ["depth", "trade,bookTicker"],
    "ws_urls": ["not json", '{"bitmex": "ws://127.0.0.1:1"}', '["ws://x"]'],
    "rest_urls": ["not json", '{"bitmex": "http://127.0.0.1:1"}'],
    "grace_ms": ["soon", "-1", "60001", "1.5"],
    "future_tolerance_ms": ["-1", "x"],
    "clock": ["local", "WALL"],
    "tick_interval_s": ["0", "-0.1", "11", "fast"],
    "stale_feed_s": ["0", "-5", "never"],
    "reconnect_initial_s": ["0", "-1", "x"],
    "reconnect_max_s": ["0", "x"],
    "max_frame_bytes": ["1023", "-1", "1MB"],
    "rotate_margin_s": ["-1", "x"],
    "backfill_max_minutes": ["0", "x"],
    "redis_url": ["http://127.0.0.1:6379", "127.0.0.1:6379"],
    "window_cap": ["0", "-1", "x"],
    "window_memory_bars": ["0", "-5", "x"],
    "redis_buffer_max_bars": ["0", "x"],
    "redis_password_file": ["/nonexistent/redis-password"],
    "model_registry": ["s3://bucket/models", "http://127.0.0.1/models"],
    "model_poll_s": ["0", "-1", "x"],
    "model_max_age_s": ["0", "-1", "x"],
    "eval_horizons": ["0", "1,1", "x", "-5"],
    "eval_window_s": ["59", "x"],
    "calibration": ["ON", "true", "maybe"],
    "mqtt_url": ["redis://127.0.0.1:1883", "127.0.0.1:1883", "mqtt://"],
    "mqtt_password_file": ["/nonexistent/mqtt-password"],
    "mqtt_tls_ca_file": ["/nonexistent/ca.pem"],
    "mqtt_tls_cert_file": ["/nonexistent/client.pem"],
    "mqtt_tls_key_file": ["/nonexistent/client.key"],
    "mqtt_qos": ["3", "-1", "x"],
    "mqtt_prefix": ["a/#", "a+b", "has space", ""],
    "mqtt_queue_max": ["0", "x"],
    "shard_count": ["0", "x"],
    "shard_index": ["-1", "x"],
    "metrics_host": ["not a host", "127.0.0.1:9108"],
    "metrics_port": ["70000", "-1", "x"],
    "log_level": ["verbose", "info!"],
    "log_json": ["perhaps", "2"],
    "instance": ["has space", "a/b", ""],
}

# Free-form by nature: any string is a valid MQTT user name, password or client id
# (MQTT 3.1.1 sections 3.1.3.1, 3.1.3.4, 3.1.3.5 allow any UTF-8 string).
NO_INVALID_VALUE = {"mqtt_username", "mqtt_password", "mqtt_client_id"}

# Invalid only together with another setting; the message must name the key.
CROSS_FIELD: list[tuple[dict[str, str], str]] = [
    (
        {"TICKCAST_RECONNECT_INITIAL_S": "10", "TICKCAST_RECONNECT_MAX_S": "5"},
        "reconnect_max_s",
    ),
    ({"TICKCAST_SHARD_COUNT": "2", "TICKCAST_SHARD_INDEX": "2"}, "shard_index"),
]
CROSS_FIELD += [
    # a client certificate without its key: MqttOptions refuses it inside Streamer()
    ({"TICKCAST_MQTT_URL": "mqtts://127.0.0.1:8883"}, "mqtt_tls_key_file"),
    # WebSocket and REST URLs of the wrong scheme fail only at the first connect, then forever
    ({"TICKCAST_WS_URLS": '{"binance": "http://127.0.0.1:9443"}'}, "ws_urls"),
    ({"TICKCAST_REST_URLS": '{"binance": "ws://127.0.0.1:9443"}'}, "rest_urls"),
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("TICKCAST_"):
            monkeypatch.delenv(key)


def env_name(field: str) -> str:
    return f"TICKCAST_{field.upper()}"


def test_every_field_has_an_invalid_case() -> None:
    fields = set(Settings.model_fields)
    assert set(INVALID) | NO_INVALID_VALUE == fields
    assert not set(INVALID) & NO_INVALID_VALUE


def cases() -> list[object]:
    out: list[object] = []
    for field, values in INVALID.items():
        for value in values:
            out.append(pytest.param(field, value, id=f"{field}={value!r}"))
    return out


@pytest.mark.parametrize(("field", "value"), cases())
def test_an_invalid_value_stops_start_up_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, field: str, value: str
) -> None:
    monkeypatch.setenv(env_name(field), value)
    if field == "mqtt_tls_key_file":  # its partner must be valid, so only the key file is wrong
        cert = tmp_path / "client.pem"
        cert.write_text("x")
        monkeypatch.setenv("TICKCAST_MQTT_TLS_CERT_FILE", str(cert))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert env_name(field) in str(caught.value)


def cross_cases() -> list[object]:
    return [pytest.param(env, key, id=key) for env, key in CROSS_FIELD]


@pytest.mark.parametrize(("env", "key"), cross_cases())
def test_an_invalid_combination_stops_start_up_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], key: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if key == "mqtt_tls_key_file":
        cert = tmp_path / "client.pem"
        cert.write_text("x")
        monkeypatch.setenv("TICKCAST_MQTT_TLS_CERT_FILE", str(cert))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert key in str(caught.value)


def test_the_daemon_exits_2_with_the_key_in_one_line_and_no_traceback() -> None:
    done = run_cli("run", env={"TICKCAST_WINDOW_CAP": "0"})
    assert done.returncode == 2
    assert "TICKCAST_WINDOW_CAP" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
