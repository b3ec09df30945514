"""Redis URLs of every mode (one server, cluster, Sentinel), the cluster key layout of the bars
and the registry, and the clients the store, the registry reader and the trainer build from a
URL (built, never connected: tests/integration/test_redis_cluster.py and test_redis_sentinel.py
run them against real servers)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from redis.asyncio import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.crc import key_slot

from streamer.core.contracts import registry
from streamer.core.contracts.redis_bars import bars_key, incomplete_key, window_of_bars_key
from streamer.core.redis_url import RedisMode, is_redis_url, parse_redis_url
from streamer.core.types import Bar
from streamer.io.model.registries import RedisRegistry as RegistryReader
from streamer.io.model.registries import open_registry
from streamer.io.store import RedisBarStore
from streamer.io.store.packing import (
    PackedConnection,
    PackedSentinelConnection,
    PackedSSLConnection,
)
from streamer.io.store.redis_store import _slot_calls
from streamer.settings import SettingsError, load_settings
from trainer.registry import RedisRegistry

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_one_server_urls_are_left_to_redis_py() -> None:
    for url in ("redis://h:6379/2", "rediss://:pw@h:6380/0?ssl_ca_certs=/ca.pem", "unix:///r.sock"):
        target = parse_redis_url(url)
        assert (target.mode, target.node_url, target.hosts, target.cluster) == (
            RedisMode.SINGLE,
            url,
            (),
            False,
        )


def test_a_cluster_url_lists_startup_nodes_and_keeps_credentials_and_options() -> None:
    target = parse_redis_url("rediss+cluster://tick:pw@a:7000,[::1]:7001,b/0?ssl_ca_certs=/ca")
    assert target.mode is RedisMode.CLUSTER and target.cluster
    assert target.hosts == (("a", 7000), ("::1", 7001), ("b", 6379))
    assert target.node_url == "rediss://tick:pw@a:7000/0?ssl_ca_certs=/ca"
    assert parse_redis_url("redis+cluster://a:1").node_url == "redis://a:1/0"


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    target = parse_redis_url("redis+sentinel://:pw@s1:5000,s2/tickcast/3?socket_timeout=2")
    assert (target.mode, target.master, target.cluster) == (RedisMode.SENTINEL, "tickcast", False)
    assert target.hosts == (("s1", 5000), ("s2", 26379))
    assert target.node_url == "redis://:pw@s1:5000/3?socket_timeout=2"
    assert parse_redis_url("redis+sentinel://s1/m").node_url == "redis://s1:26379/0"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://:s3cret@h:6379", "need a"),
        ("redis+cluster://:s3cret@a:1/2", "database 0 only"),
        ("redis+cluster://:s3cret@a:1,:2", "empty host"),
        ("redis+cluster://:s3cret@a:x", "bad port"),
        ("redis+cluster://:s3cret@a:70000", "out of range"),
        ("redis+sentinel://:s3cret@s1:1", "no master name"),
        ("redis+sentinel://:s3cret@s1:1/m/x", "bad database"),
        ("redis+sentinel://:s3cret@s1:1/m/0/1", "too many"),
    ],
)
def test_a_bad_url_is_refused_without_echoing_its_password(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as refused:
        parse_redis_url(url)
    assert "s3cret" not in str(refused.value)
    with pytest.raises(SettingsError) as invalid:
        load_settings(redis_url=url, symbols=["binance:BTCUSDT"])
    assert "s3cret" not in str(invalid.value)


def test_settings_take_cluster_and_sentinel_urls_for_bars_and_registry() -> None:
    for url in ("redis+cluster://a:7000,b:7001", "redis+sentinel://s1:26379,s2/tickcast/0"):
        settings = load_settings(redis_url=url, model_registry=url, symbols=["binance:BTCUSDT"])
        assert settings.redis_url == url and settings.model_registry == url
        assert is_redis_url(url)
    assert not is_redis_url("var/registry") and not is_redis_url("model.onnx")


def test_a_windows_cluster_keys_share_a_slot_and_read_back() -> None:
    for exchange, symbol in [("binance", "BTCUSDT"), ("kraken", "BTC-USD"), ("coinbase", "X")]:
        bars, marks = bars_key(exchange, symbol, True), incomplete_key(exchange, symbol, True)
        assert bars == f"tickcast:bars:{{{exchange}:{symbol}}}"
        assert marks == f"tickcast:incomplete:{{{exchange}:{symbol}}}"
        assert key_slot(bars.encode()) == key_slot(marks.encode())
        assert window_of_bars_key(bars, cluster=True) == (exchange, symbol)
        assert window_of_bars_key(bars_key(exchange, symbol)) == (exchange, symbol)
        assert window_of_bars_key(bars_key(exchange, symbol), cluster=True) is None
    assert window_of_bars_key("tickcast:incomplete:binance:BTCUSDT") is None


def test_the_registrys_cluster_keys_share_one_slot_and_the_plain_ones_are_unchanged() -> None:
    assert (registry.KEYS.current, registry.KEYS.versions) == (
        registry.CURRENT_KEY,
        registry.VERSIONS_KEY,
    )
    assert registry.KEYS.onnx("v1") == registry.onnx_key("v1")
    assert registry.KEYS.manifest("v1") == registry.manifest_key("v1")
    keys = registry.CLUSTER_KEYS
    names = [keys.current, keys.versions, keys.onnx("v1"), keys.manifest("20230501T0-ab")]
    assert all(name.startswith("{tickcast:models}:") for name in names)
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert registry.redis_keys(True) is keys and registry.redis_keys(False) is registry.KEYS


def _bar(symbol: str, minute: int, complete: bool = True) -> Bar:
    return Bar("binance", symbol, 60_000 * minute, 1.0, 2.0, 0.5, 1.5, 3.0, 4, complete)


def test_a_cluster_round_is_one_call_per_slot_holding_each_window_once() -> None:
    windows = {("binance", f"S{i}"): [_bar(f"S{i}", 1)] for i in range(2000)}
    windows["binance", "S7"] = [_bar("S7", 1, complete=False), _bar("S7", 2)]
    calls = _slot_calls(windows, 1440)
    slots = [{key_slot(key.encode()) for key in keys} for keys, _ in calls]
    assert all(len(s) == 1 for s in slots)  # every call touches one slot
    assert len({next(iter(s)) for s in slots}) == len(calls)  # and no slot gets two calls
    assert len(calls) < len(windows)  # 2,000 windows share some of the 16,384 slots
    windows_sent = [key for keys, _ in calls for key in keys[::2]]
    assert sorted(windows_sent) == sorted(bars_key(e, s, True) for e, s in windows)
    for keys, args in calls:
        assert args[0] == 1440 and len(args) == 1 + len(keys) // 2
        if bars_key("binance", "S7", True) in keys:
            arg = args[1 + keys.index(bars_key("binance", "S7", True)) // 2]
            assert isinstance(arg, bytes) and arg.startswith(b"!") and b"\n" in arg


def test_the_store_builds_a_cluster_client_with_packing_connections() -> None:
    store = RedisBarStore.from_url("redis+cluster://tick:pw@c1.invalid:7000,c2.invalid:7001")
    client = store._client
    assert isinstance(client, RedisCluster) and store.cluster
    assert store.name == "redis+cluster://tick:***@c1.invalid:7000,c2.invalid:7001"
    nodes = client.nodes_manager.startup_nodes.values()
    assert sorted(n.name for n in nodes) == ["c1.invalid:7000", "c2.invalid:7001"]
    assert {n.connection_class for n in nodes} == {PackedConnection}
    assert client.connection_kwargs["connection_class"] is PackedConnection  # nodes found later
    assert client.connection_kwargs["password"] == "pw"
    tls = RedisBarStore.from_url("rediss+cluster://c1.invalid:7000?ssl_ca_certs=/ca.pem")
    assert tls._client.connection_kwargs["connection_class"] is PackedSSLConnection  # type: ignore[union-attr]
    assert tls._client.connection_kwargs["ssl_ca_certs"] == "/ca.pem"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="bad Redis URL") as refused:
        RedisBarStore.from_url("redis+cluster://:s3cret@c1.invalid:7000?no_such_option=1")
    assert "s3cret" not in str(refused.value)


def test_the_store_builds_a_sentinel_client_whose_password_file_wins() -> None:
    store = RedisBarStore.from_url(
        "redis+sentinel://:url-pw@s1.invalid:26379,s2.invalid/tickcast/2", password="file-pw"
    )
    assert not store.cluster
    pool = store._client.connection_pool  # type: ignore[union-attr]
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "tickcast" and pool.connection_class is PackedSentinelConnection
    assert pool.connection_kwargs["password"] == "file-pw"
    assert pool.connection_kwargs["db"] == 2
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26379]
    assert all(s.connection_pool.connection_kwargs.get("password") is None for s in sentinels)


def test_the_registry_reader_and_the_trainer_use_the_cluster_keys_on_a_cluster() -> None:
    url = "redis+cluster://c1.invalid:7000"
    reader = open_registry(url)
    assert isinstance(reader, RegistryReader)
    assert reader._keys is registry.CLUSTER_KEYS
    assert isinstance(reader._client, RedisCluster)
    assert open_registry("redis://r.invalid:6379/0")._keys is registry.KEYS  # type: ignore[union-attr]
    sentinel = open_registry("redis+sentinel://s.invalid/tickcast")
    assert sentinel._keys is registry.KEYS  # type: ignore[union-attr]
    # (the trainer's blocking cluster client connects when made: tests/integration)
    trainer = RedisRegistry("redis+sentinel://s.invalid/tickcast")
    assert not trainer.cluster and trainer.keys is registry.KEYS


def test_the_docs_describe_the_cluster_layout_and_the_url_forms() -> None:
    contracts = (DOCS / "contracts.md").read_text(encoding="utf-8")
    code = set(re.findall(r"`([^`\n]+)`", contracts))
    assert bars_key("binance", "BTCUSDT", True) in code
    assert incomplete_key("binance", "BTCUSDT", True) in code
    assert {
        registry.CLUSTER_KEYS.current,
        registry.CLUSTER_KEYS.versions,
        registry.CLUSTER_KEYS.onnx("<version>"),
        registry.CLUSTER_KEYS.manifest("<version>"),
    } <= code
    configuration = (DOCS / "configuration.md").read_text(encoding="utf-8")
    operations = (DOCS / "operations.md").read_text(encoding="utf-8")
    for doc in (configuration, operations):
        assert "redis+cluster://" in doc and "redis+sentinel://" in doc
    assert "cluster is not supported" not in " ".join(operations.split()).lower()
