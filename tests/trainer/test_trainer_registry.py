"""Registry: atomic publish, retention, the promotion gate and rollback, on both backends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainer.registry import (
    REDIS_CURRENT,
    REDIS_EVENTS,
    REDIS_VERSIONS,
    DirectoryRegistry,
    GateFigures,
    RedisRegistry,
    RegistryError,
    build_manifest,
    gate,
    gate_figures,
    redis_manifest_key,
    redis_onnx_key,
    sha256_hex,
)

REPO = Path(__file__).resolve().parents[2]


def _artifact(n: int) -> bytes:
    # distinct bytes per version; the registry never parses the model
    return b"onnx-bytes-" + str(n).encode() * 1000


def _manifest(n: int, data: bytes) -> dict[str, Any]:
    manifest = build_manifest(
        f"2023050{n}T000000Z-{sha256_hex(data)[:8]}",
        data,
        {"window": 60, "horizon": 15, "quantiles": [0.1, 0.5, 0.9], "interval_s": 60},
        {"trained_at": f"2023-05-0{n}T00:00:00Z", "symbols": ["BTCUSDT"]},
        {"mean": {"model": {"pinball_bps": 5.0 - n / 10}}},
        "tickcast test",
        None,
    )
    manifest["created_at"] = f"2023-05-0{n}T00:00:00.000000Z"
    return manifest


def _publish(registry: Any, n: int, promote: bool) -> str:
    data = _artifact(n)
    return str(registry.publish(data, _manifest(n, data), promote=promote))


@pytest.fixture
def directory(tmp_path: Path) -> DirectoryRegistry:
    return DirectoryRegistry(tmp_path / "registry")


@pytest.fixture
def redis_registry(redis_server: Any) -> Iterator[RedisRegistry]:
    registry = RedisRegistry(redis_server.url)
    yield registry
    registry.close()


def _backends(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


backends = pytest.mark.parametrize(
    "registry",
    ["directory", pytest.param("redis_registry", marks=pytest.mark.integration)],
    indirect=True,
)


@pytest.fixture
def registry(request: pytest.FixtureRequest) -> Any:
    return _backends(request)


@backends
def test_publish_fetch_and_list(registry: Any) -> None:
    assert registry.current_version() is None
    v1 = _publish(registry, 1, promote=True)
    v2 = _publish(registry, 2, promote=False)
    assert registry.current_version() == v1
    data, manifest = registry.fetch(v2)
    assert data == _artifact(2)
    assert manifest["sha256"] == sha256_hex(data)
    assert manifest["status"] == "candidate"
    assert manifest["parent_version"] == v1
    assert [e["event"] for e in manifest["history"]] == ["published"]
    assert registry.manifest(v1)["status"] == "promoted"
    assert [m["version"] for m in registry.list_versions()] == [v2, v1]
    with pytest.raises(RegistryError, match="already exists"):
        _publish(registry, 2, promote=False)


@backends
def test_retention_keeps_the_newest_and_never_the_current(registry: Any) -> None:
    v1 = _publish(registry, 1, promote=True)
    for n in range(2, 6):
        _publish(registry, n, promote=False)
    pruned = registry.prune(keep=2)
    remaining = [m["version"] for m in registry.list_versions()]
    assert len(pruned) == 2 and v1 not in pruned
    assert remaining == [
        _manifest(5, _artifact(5))["version"],
        _manifest(4, _artifact(4))["version"],
        v1,
    ]
    assert registry.current_version() == v1
    with pytest.raises(RegistryError):
        registry.fetch(pruned[0])


@backends
def test_promote_and_rollback_walk_back_through_promoted_versions(registry: Any) -> None:
    v1 = _publish(registry, 1, promote=True)
    v2 = _publish(registry, 2, promote=True)
    v3 = _publish(registry, 3, promote=False)
    assert registry.current_version() == v2
    registry.promote(v3)  # operator override of the gate
    assert registry.current_version() == v3
    assert registry.rollback() == v2
    assert registry.manifest(v3)["status"] == "rolled_back"
    assert registry.rollback() == v1  # a second rollback goes one step further back
    assert registry.current_version() == v1
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    events = [e["event"] for e in registry.manifest(v2)["history"]]
    assert events == ["published", "promoted", "restored", "rolled_back"]


@backends
def test_a_corrupt_artifact_is_refused_on_fetch(registry: Any, tmp_path: Path) -> None:
    v1 = _publish(registry, 1, promote=True)
    if isinstance(registry, DirectoryRegistry):
        (registry.versions / v1 / "model.onnx").write_bytes(b"tampered")
    else:
        registry.client.set(redis_onnx_key(v1), b"tampered")
    with pytest.raises(RegistryError, match="sha256"):
        registry.fetch(v1)


def test_directory_publish_is_atomic_for_a_concurrent_reader(directory: DirectoryRegistry) -> None:
    """A reader polling current/manifest/model while versions are published and promoted
    never sees a missing file or a hash mismatch."""
    _publish(directory, 1, promote=True)
    errors: list[str] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            version = directory.current_version()
            assert version is not None
            try:
                directory.fetch(version)
                reads += 1
            except Exception as exc:  # any failure is the bug this test looks for
                errors.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(2, 9):
            _publish(directory, n, promote=True)
            directory.prune(keep=3)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert reads > 0
    leftovers = list((directory.root / ".staging").iterdir())
    assert leftovers == []
    assert json.loads((directory.root / "current").read_text()) == {
        "version": _manifest(8, _artifact(8))["version"]
    }


def test_directory_failed_publish_leaves_no_version(
    directory: DirectoryRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = _publish(directory, 1, promote=True)
    data = _artifact(2)
    manifest = _manifest(2, data)
    manifest["sha256"] = "0" * 64  # a manifest that does not describe its artifact
    with pytest.raises(RegistryError, match="sha256"):
        directory.publish(data, manifest, promote=True)
    assert directory.current_version() == v1
    assert [m["version"] for m in directory.list_versions()] == [v1]


@pytest.mark.integration
def test_redis_publish_is_one_transaction_and_announces_current(
    redis_registry: RedisRegistry,
) -> None:
    client = redis_registry.client
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(REDIS_EVENTS)
    deadline = time.monotonic() + 5
    while pubsub.get_message(timeout=0.1) is None and time.monotonic() < deadline:
        pass  # the subscribe confirmation
    v1 = _publish(redis_registry, 1, promote=True)
    v2 = _publish(redis_registry, 2, promote=False)
    assert client.get(REDIS_CURRENT) == v1.encode()
    assert client.zrange(REDIS_VERSIONS, 0, -1) == [v1.encode(), v2.encode()]
    assert json.loads(client.get(redis_manifest_key(v2)))["parent_version"] == v1  # type: ignore[arg-type]
    redis_registry.promote(v2)
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5
    while len(messages) < 2 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "message":
            messages.append(json.loads(message["data"]))
    pubsub.close()
    assert messages == [
        {"event": "promoted", "version": v1, "previous": None},
        {"event": "promoted", "version": v2, "previous": v1},
    ]


def _figures(cand: float, ewma: float, mae: float, pers: float, cur: float | None) -> GateFigures:
    return GateFigures(cand, ewma, mae, pers, cur, horizons=15)


def test_gate_promotes_only_a_model_that_beats_everything() -> None:
    ok = gate(_figures(5.30, 5.43, 16.20, 16.21, 5.35))
    assert ok.promote
    assert ok.to_dict()["decision"] == "promote"
    first = gate(_figures(5.30, 5.43, 16.20, 16.21, None))
    assert first.promote and "no current model to beat" in first.reasons

    worse_than_current = gate(_figures(5.30, 5.43, 16.20, 16.21, 5.29))
    assert not worse_than_current.promote
    assert any("does not beat the current model 5.2900" in r for r in worse_than_current.reasons)

    worse_than_band = gate(_figures(5.44, 5.43, 16.20, 16.21, 5.50))
    assert not worse_than_band.promote
    assert any("does not beat the EWMA band 5.4300" in r for r in worse_than_band.reasons)

    median_worse = gate(_figures(5.30, 5.43, 16.25, 16.21, None))
    assert not median_worse.promote
    assert any("worse than persistence 16.2100" in r for r in median_worse.reasons)
    assert median_worse.to_dict()["decision"] == "candidate"


def test_gate_figures_compare_on_common_horizons() -> None:
    def rows(pinball: list[float], mae: list[float]) -> dict[str, Any]:
        return {
            "per_h": [{"pinball_bps": p, "mae_bps": m} for p, m in zip(pinball, mae, strict=True)]
        }

    report = {
        "eval": {"start": "a", "end": "b"},
        "all": {
            "contenders": {
                "model": rows([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]),
                "current": rows([1.5, 2.5], [2.0, 4.0]),  # a current model with horizon 2
                "ewma_band": rows([1.2, 2.2, 3.2], [2.0, 4.0, 6.0]),
                "persistence": rows([1.9, 3.9, 5.9], [2.0, 4.0, 6.0]),
            }
        },
    }
    f = gate_figures(report, "model", "current")
    assert (f.horizons, f.candidate_pinball, f.current_pinball) == (2, 1.5, 2.0)
    assert f.ewma_pinball == pytest.approx(1.7)
    assert (f.candidate_mae, f.persistence_mae) == (3.0, 3.0)
    assert gate(f).promote
