"""Settings are validated once at start-up; every bad key or value is named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.settings import SettingsError, load_settings, shard_of


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("TICKCAST_"):
            monkeypatch.delenv(key)


def test_defaults_are_valid() -> None:
    s = load_settings()
    assert s.symbols == ["binance:BTCUSDT", "binance:ETHUSDT"]
    assert s.grace_ms == 2000
    assert s.feeds() == {"binance": ["BTCUSDT", "ETHUSDT"]}


def test_environment_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKCAST_SYMBOLS", "binance:btcusdt, coinbase:BTC-USD,kraken:BTC-USD")
    monkeypatch.setenv("TICKCAST_GRACE_MS", "1500")
    s = load_settings()
    assert s.feeds() == {"binance": ["BTCUSDT"], "coinbase": ["BTC-USD"], "kraken": ["BTC-USD"]}
    assert s.grace_ms == 1500


def test_unknown_environment_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKCAST_GRACE_SECONDS", "2")
    with pytest.raises(SettingsError, match="TICKCAST_GRACE_SECONDS"):
        load_settings()


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("TICKCAST_GRACE_MS", "soon", "TICKCAST_GRACE_MS"),
        ("TICKCAST_GRACE_MS", "-1", "TICKCAST_GRACE_MS"),
        ("TICKCAST_SYMBOLS", "nasdaq:AAPL", "TICKCAST_SYMBOLS"),
        ("TICKCAST_SYMBOLS", "BTCUSDT", "TICKCAST_SYMBOLS"),
        ("TICKCAST_SYMBOLS", "kraken:BTC/USD", "TICKCAST_SYMBOLS"),
        ("TICKCAST_BINANCE_CHANNELS", "depth", "TICKCAST_BINANCE_CHANNELS"),
        ("TICKCAST_LOG_JSON", "perhaps", "TICKCAST_LOG_JSON"),
        ("TICKCAST_METRICS_PORT", "70000", "TICKCAST_METRICS_PORT"),
        ("TICKCAST_WS_URLS", '{"bitmex": "ws://x"}', "TICKCAST_WS_URLS"),
    ],
)
def test_bad_values_are_named(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str, named: str
) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_toml_file_and_its_unknown_keys(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('symbols = ["kraken:BTC-USD"]\ngrace_ms = 500\n')
    s = load_settings(good)
    assert s.symbols == ["kraken:BTC-USD"] and s.grace_ms == 500

    bad = tmp_path / "bad.toml"
    bad.write_text('symbols = ["kraken:BTC-USD"]\ngrace = 500\n')
    with pytest.raises(SettingsError, match="grace"):
        load_settings(bad)


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("grace_ms = 500\n")
    monkeypatch.setenv("TICKCAST_GRACE_MS", "700")
    assert load_settings(conf).grace_ms == 700


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValueError):
        s.grace_ms = 1  # type: ignore[misc]


def test_shards_split_symbols_stably_and_completely(monkeypatch: pytest.MonkeyPatch) -> None:
    symbols = [f"binance:SYM{i}USDT" for i in range(40)]
    seen: list[str] = []
    for index in range(3):
        s = load_settings(symbols=symbols, shard_count=3, shard_index=index)
        seen += [f"binance:{x}" for x in s.feeds().get("binance", [])]
    assert sorted(seen) == sorted(symbols)  # every symbol on exactly one shard
    assert shard_of("binance:BTCUSDT", 3) == shard_of("binance:BTCUSDT", 3)
    monkeypatch.setenv("HOSTNAME", "tickcast-streamer-2")
    s = load_settings(symbols=symbols, shard_count=3)
    assert s.shard() == 2
    monkeypatch.setenv("HOSTNAME", "laptop")
    with pytest.raises(SettingsError, match="TICKCAST_SHARD_INDEX"):
        load_settings(symbols=symbols, shard_count=3).feeds()
    with pytest.raises(SettingsError, match="shard_index"):
        load_settings(symbols=symbols, shard_count=2, shard_index=2)


def test_loading_a_config_file_leaves_the_environment_alone(tmp_path: Path) -> None:
    import os

    conf = tmp_path / "c.toml"
    conf.write_text("grace_ms = 500\n")
    load_settings(conf)
    assert "TICKCAST_CONFIG" not in os.environ
    assert load_settings().grace_ms == 2000
