"""Registry: atomic publish, retention, the promotion gate and rollback, on both backends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.manifests import dated_manifest

from streamer.core.contracts import registry as contract
from trainer.registry import (
    DirectoryRegistry,
    GateFigures,
    RedisRegistry,
    RegistryError,
    gate,
    gate_figures,
    sha256_hex,
)

REPO = Path(__file__).resolve().parents[2]


def _artifact(n: int) -> bytes:
    # distinct bytes per version; the registry never parses the model
    return b"onnx-bytes-" + str(n).encode() * 1000


def _manifest(n: int, data: bytes) -> dict[str, Any]:
    return dated_manifest(n, data, window=60, horizon=15)


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
def test_a_version_name_readers_would_refuse_is_never_published(registry: Any) -> None:
    data = _artifact(1)
    for name in ("../escape", "has space", ""):
        manifest = _manifest(1, data) | {"version": name}
        with pytest.raises(RegistryError, match="not a valid registry version name"):
            registry.publish(data, manifest, promote=True)
    assert registry.current_version() is None and registry.list_versions() == []


@backends
def test_a_corrupt_artifact_is_refused_on_fetch(registry: Any, tmp_path: Path) -> None:
    v1 = _publish(registry, 1, promote=True)
    if isinstance(registry, DirectoryRegistry):
        (registry.versions / v1 / "model.onnx").write_bytes(b"tampered")
    else:
        registry.client.set(contract.onnx_key(v1), b"tampered")
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
    pubsub.subscribe(contract.EVENTS_CHANNEL)
    deadline = time.monotonic() + 5
    while pubsub.get_message(timeout=0.1) is None and time.monotonic() < deadline:
        pass  # the subscribe confirmation
    v1 = _publish(redis_registry, 1, promote=True)
    v2 = _publish(redis_registry, 2, promote=False)
    assert client.get(contract.CURRENT_KEY) == v1.encode()
    assert client.zrange(contract.VERSIONS_KEY, 0, -1) == [v1.encode(), v2.encode()]
    assert json.loads(client.get(contract.manifest_key(v2)))["parent_version"] == v1  # type: ignore[arg-type]
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


def _figures(
    cand: float, ewma: float, mae: float, pers: float, cur: float | None, har: float = 5.38
) -> GateFigures:
    return GateFigures(cand, ewma, har, mae, pers, cur, horizons=15)


def test_gate_promotes_only_a_model_that_beats_everything() -> None:
    ok = gate(_figures(5.30, 5.43, 16.20, 16.21, 5.35))
    assert ok.promote
    assert ok.to_dict()["decision"] == "promote"
    assert "pinball 5.3000 bp < HAR band 5.3800 bp" in ok.reasons
    assert ok.to_dict()["figures"]["har_pinball_bps"] == 5.38
    first = gate(_figures(5.30, 5.43, 16.20, 16.21, None))
    assert first.promote and "no current model to beat" in first.reasons

    worse_than_current = gate(_figures(5.30, 5.43, 16.20, 16.21, 5.29))
    assert not worse_than_current.promote
    assert any("does not beat the current model 5.2900" in r for r in worse_than_current.reasons)

    worse_than_band = gate(_figures(5.44, 5.43, 16.20, 16.21, 5.50, har=5.50))
    assert not worse_than_band.promote
    assert any("does not beat the EWMA band 5.4300" in r for r in worse_than_band.reasons)
    assert not any("does not beat the HAR band" in r for r in worse_than_band.reasons)

    median_worse = gate(_figures(5.30, 5.43, 16.25, 16.21, None))
    assert not median_worse.promote
    assert any("worse than persistence 16.2100" in r for r in median_worse.reasons)
    assert median_worse.to_dict()["decision"] == "candidate"


def test_gate_refuses_a_model_that_beats_the_ewma_band_but_not_the_har_band() -> None:
    # better than EWMA, the current model and persistence; the HAR band alone is better
    refused = gate(_figures(5.30, 5.43, 16.20, 16.21, 5.35, har=5.29))
    assert not refused.promote
    assert refused.to_dict()["decision"] == "candidate"
    assert "pinball 5.3000 bp < EWMA band 5.4300 bp" in refused.reasons
    assert "pinball 5.3000 bp does not beat the HAR band 5.2900 bp" in refused.reasons
    tie = gate(_figures(5.30, 5.43, 16.20, 16.21, None, har=5.30))  # a tie does not beat it
    assert not tie.promote
    assert "pinball 5.3000 bp does not beat the HAR band 5.3000 bp" in tie.reasons
    beats_both = gate(_figures(5.30, 5.43, 16.20, 16.21, 5.35, har=5.31))
    assert beats_both.promote
    assert not any("does not beat" in r for r in beats_both.reasons)


def test_gate_figures_compare_on_common_horizons() -> None:
    def rows(pinball: list[float], mae: list[float]) -> dict[str, Any]:
        per_h = [
            {"pinball_bps": p, "pinball_levels_bps": [p, p, p], "mae_bps": m}
            for p, m in zip(pinball, mae, strict=True)
        ]
        return {"levels": [0.1, 0.5, 0.9], "per_h": per_h}

    report: dict[str, Any] = {
        "eval": {"start": "a", "end": "b"},
        "all": {
            "contenders": {
                "model": rows([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]),
                "current": rows([1.5, 2.5], [2.0, 4.0]),  # a current model with horizon 2
                "ewma_band": rows([1.2, 2.2, 3.2], [2.0, 4.0, 6.0]),
                "har_band": rows([1.1, 2.1, 3.1], [2.0, 4.0, 6.0]),
                "persistence": rows([1.9, 3.9, 5.9], [2.0, 4.0, 6.0]),
            }
        },
    }
    f = gate_figures(report, "model", "current")
    assert (f.horizons, f.candidate_pinball, f.current_pinball) == (2, 1.5, 2.0)
    assert f.ewma_pinball == pytest.approx(1.7)
    assert f.har_pinball == pytest.approx(1.6)
    assert (f.candidate_mae, f.persistence_mae) == (3.0, 3.0)
    assert gate(f).promote
    # the same candidate, with a HAR band that is better on the compared horizons only
    report["all"]["contenders"]["har_band"] = rows([1.0, 1.9, 0.1], [2.0, 4.0, 6.0])
    refused = gate(gate_figures(report, "model", "current"))
    assert not refused.promote
    assert "pinball 1.5000 bp does not beat the HAR band 1.4500 bp" in refused.reasons


# a Gaussian band's pinball loss per level in units of sigma: sigma * phi(z_level)
GAUSS = {
    0.05: 0.1031,
    0.1: 0.1755,
    0.25: 0.3178,
    0.5: 0.3989,
    0.75: 0.3178,
    0.9: 0.1755,
    0.95: 0.1031,
}
SEVEN = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
THREE = (0.1, 0.5, 0.9)


def _contender(levels: tuple[float, ...], scale: float, horizons: int = 2) -> dict[str, Any]:
    per_level = [GAUSS[q] * scale for q in levels]
    row = {
        "pinball_levels_bps": per_level,
        "pinball_bps": sum(per_level) / len(per_level),  # the mean over its own levels
        "mae_bps": 10.0,
    }
    return {"levels": list(levels), "per_h": [dict(row) for _ in range(horizons)]}


def test_gate_compares_a_seven_level_candidate_with_a_three_level_current_at_common_levels() -> (
    None
):
    # the candidate's band is 0.1 % wider in sigma than the current's: slightly worse at every
    # level; its mean over its own seven levels is still 9 % lower than the current model's mean
    # over three, because tail levels lose less than the median
    candidate = _contender(SEVEN, 1.001)
    current = _contender(THREE, 1.0)
    assert candidate["per_h"][0]["pinball_bps"] < 0.92 * current["per_h"][0]["pinball_bps"]
    report: dict[str, Any] = {
        "eval": {"start": "a", "end": "b"},
        "all": {
            "contenders": {
                "model": candidate,
                "current": current,
                # the bands are scored at every level any contender has
                "ewma_band": _contender(SEVEN, 1.05),
                "har_band": _contender(SEVEN, 1.02),
                "persistence": _contender(SEVEN, 2.0) | {"per_h": [{"mae_bps": 10.5}] * 2},
            }
        },
    }
    f = gate_figures(report, "model", "current")
    assert f.levels == THREE and f.to_dict()["levels"] == list(THREE)
    expected = sum(GAUSS[q] for q in THREE) / 3
    assert f.candidate_pinball == pytest.approx(1.001 * expected)
    assert f.current_pinball == pytest.approx(expected)
    assert f.ewma_pinball == pytest.approx(1.05 * expected)  # the band at the same levels
    assert f.har_pinball == pytest.approx(1.02 * expected)
    decision = gate(f)
    assert not decision.promote
    assert "pinball compared at levels 0.1, 0.5, 0.9 over 2 horizons" in decision.reasons
    assert any("does not beat the current model" in r for r in decision.reasons)
    assert not any("does not beat the EWMA band" in r for r in decision.reasons)
    assert not any("does not beat the HAR band" in r for r in decision.reasons)

    # the same candidate with no current model is compared with the bands at all its levels
    alone = gate_figures(report, "model", None)
    assert alone.levels == SEVEN
    assert alone.candidate_pinball == pytest.approx(candidate["per_h"][0]["pinball_bps"])
    assert alone.har_pinball == pytest.approx(1.02 / 1.001 * alone.candidate_pinball)
    assert gate(alone).promote
