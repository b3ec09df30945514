"""Model registry: versioned artifacts, atomic publish, promotion gate, promote and rollback.

This module imports only the standard library, ``redis`` and ``streamer.core``: no torch, so
operators' ``promote``/``rollback``/``list`` commands start fast.

Two backends share one behaviour (``open_registry(target)`` picks by ``redis://`` prefix):

Directory backend (systemd, a shared volume)::

    <root>/current                         {"version": "<version>"}; replaced atomically
    <root>/versions/<version>/model.onnx   the artifact, never modified after publish
    <root>/versions/<version>/manifest.json
    <root>/.staging/                       publish in progress; readers ignore it
    <root>/.lock                           flock held by writers (publish, promote, ...)

A version directory is written completely under ``.staging`` and renamed into ``versions/`` in
one ``rename``; ``current`` is written to a temp file and ``os.replace``d. A reader therefore
never sees a half-written version, and ``current`` always names a complete one. To load the
current model: read ``current``, read ``versions/<v>/manifest.json`` and ``model.onnx``, check
``sha256(model.onnx) == manifest["sha256"]``. If ``current`` is absent there is no promoted
model yet. Versions not named by ``current`` are candidates or older models. Manifests are
rewritten (atomically) when a version's status changes.

Redis backend (Kubernetes, no shared volume)::

    tickcast:models:{version}:onnx       the artifact bytes
    tickcast:models:{version}:manifest   manifest JSON (same fields as manifest.json)
    tickcast:models:current              the current version string
    tickcast:models:versions             sorted set of versions, score = created_at (ms)
    channel tickcast:models:events       JSON {"event", "version", "previous"} when current changes

A publish writes the artifact, manifest, index entry (and, when promoted, ``current`` plus the
event) in one MULTI/EXEC transaction; promote and rollback WATCH ``current``. To load the
current model: GET ``current``, then MGET the version's ``:onnx`` and ``:manifest`` and check
the sha256; subscribe to the channel (or poll ``current``) to notice changes.

Manifest fields: ``manifest`` (schema 1), ``version``, ``sha256``, ``size_bytes``,
``created_at`` (ISO UTC), ``contract``, ``window``, ``horizon``, ``quantiles``, ``trained``
(trained_at, symbols, exchanges, per-series time ranges and rows, splits), ``metrics`` (the
evaluation summary), ``code_version``, ``parent_version`` (current at publish time),
``status`` (``candidate``, ``promoted`` or ``rolled_back``), ``promoted_at``, ``gate``
(``decision``, ``reasons``, ``figures``) and ``history`` (events with time and actor).

Retention keeps the newest N versions by creation time and never deletes ``current``.
Rollback goes back to the most recently promoted version other than the current one and marks
the current one ``rolled_back``, so a second rollback goes one step further back.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

MANIFEST_SCHEMA = 1
STATUS_CANDIDATE = "candidate"
STATUS_PROMOTED = "promoted"
STATUS_ROLLED_BACK = "rolled_back"
REDIS_PREFIX = "tickcast:models"
REDIS_CURRENT = f"{REDIS_PREFIX}:current"
REDIS_VERSIONS = f"{REDIS_PREFIX}:versions"
REDIS_EVENTS = f"{REDIS_PREFIX}:events"
DEFAULT_KEEP = 10


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message says why."""


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _created_ms(manifest: dict[str, Any]) -> int:
    stamp = datetime.fromisoformat(str(manifest["created_at"]).replace("Z", "+00:00"))
    return round(stamp.timestamp() * 1000)


def verify(model_bytes: bytes, manifest: dict[str, Any]) -> None:
    """The check every reader must make before loading a model."""
    digest = sha256_hex(model_bytes)
    if digest != manifest.get("sha256"):
        raise RegistryError(
            f"version {manifest.get('version')}: sha256 {digest} does not match the manifest's "
            f"{manifest.get('sha256')}"
        )


# --- the promotion gate ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateFigures:
    """Mean figures over the compared horizons, all on the same evaluation origins (bp)."""

    candidate_pinball: float
    ewma_pinball: float
    candidate_mae: float
    persistence_mae: float
    current_pinball: float | None = None
    horizons: int = 0
    window: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate_pinball_bps": self.candidate_pinball,
            "ewma_pinball_bps": self.ewma_pinball,
            "current_pinball_bps": self.current_pinball,
            "candidate_mae_bps": self.candidate_mae,
            "persistence_mae_bps": self.persistence_mae,
            "horizons": self.horizons,
            "eval": self.window,
        }


@dataclass(frozen=True, slots=True)
class GateDecision:
    promote: bool
    reasons: tuple[str, ...]
    figures: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": "promote" if self.promote else "candidate",
            "reasons": list(self.reasons),
            "figures": self.figures,
        }


def gate_figures(report: dict[str, Any], candidate: str, current: str | None) -> GateFigures:
    """Extract the gate's figures from an evaluation report that scored both models."""
    contenders = report["all"]["contenders"]
    names = [candidate] + ([current] if current else [])
    horizons = min(len(contenders[n]["per_h"]) for n in names)

    def mean(name: str, key: str) -> float:
        rows = contenders[name]["per_h"][:horizons]
        return sum(float(r[key]) for r in rows) / horizons

    return GateFigures(
        candidate_pinball=mean(candidate, "pinball_bps"),
        ewma_pinball=mean("ewma_band", "pinball_bps"),
        candidate_mae=mean(candidate, "mae_bps"),
        persistence_mae=mean("persistence", "mae_bps"),
        current_pinball=mean(current, "pinball_bps") if current else None,
        horizons=horizons,
        window=dict(report.get("eval", {})),
    )


def gate(figures: GateFigures) -> GateDecision:
    """Promote only if pinball beats the current model and the EWMA band, and the median is
    no worse than persistence; otherwise say which condition failed, with the numbers."""
    reasons = []
    ok = True
    f = figures
    if f.candidate_pinball < f.ewma_pinball:
        reasons.append(f"pinball {f.candidate_pinball:.4f} bp < EWMA band {f.ewma_pinball:.4f} bp")
    else:
        ok = False
        reasons.append(
            f"pinball {f.candidate_pinball:.4f} bp does not beat the EWMA band "
            f"{f.ewma_pinball:.4f} bp"
        )
    if f.current_pinball is None:
        reasons.append("no current model to beat")
    elif f.candidate_pinball < f.current_pinball:
        reasons.append(
            f"pinball {f.candidate_pinball:.4f} bp < current model {f.current_pinball:.4f} bp"
        )
    else:
        ok = False
        reasons.append(
            f"pinball {f.candidate_pinball:.4f} bp does not beat the current model "
            f"{f.current_pinball:.4f} bp"
        )
    if f.candidate_mae <= f.persistence_mae:
        reasons.append(
            f"median MAE {f.candidate_mae:.4f} bp <= persistence {f.persistence_mae:.4f} bp"
        )
    else:
        ok = False
        reasons.append(
            f"median MAE {f.candidate_mae:.4f} bp is worse than persistence "
            f"{f.persistence_mae:.4f} bp"
        )
    return GateDecision(ok, tuple(reasons), f.to_dict())


# --- manifests -------------------------------------------------------------------------------


def build_manifest(
    version: str,
    model_bytes: bytes,
    spec_metadata: dict[str, Any],
    trained: dict[str, Any],
    metrics: dict[str, Any],
    code_version: str,
    decision: GateDecision | None,
) -> dict[str, Any]:
    """A manifest for a new version; ``parent_version`` and ``status`` are set by publish."""
    return {
        "manifest": MANIFEST_SCHEMA,
        "version": version,
        "sha256": sha256_hex(model_bytes),
        "size_bytes": len(model_bytes),
        "created_at": now_iso(),
        "contract": 1,
        **spec_metadata,
        "trained": trained,
        "metrics": metrics,
        "code_version": code_version,
        "parent_version": None,
        "status": STATUS_CANDIDATE,
        "promoted_at": None,
        "gate": decision.to_dict() if decision else None,
        "history": [],
    }


def _event(manifest: dict[str, Any], event: str, actor: str, detail: str = "") -> None:
    entry = {"at": now_iso(), "event": event, "by": actor}
    if detail:
        entry["detail"] = detail
    manifest.setdefault("history", []).append(entry)


class Registry(Protocol):
    def current_version(self) -> str | None: ...

    def fetch(self, version: str) -> tuple[bytes, dict[str, Any]]: ...

    def manifest(self, version: str) -> dict[str, Any]: ...

    def list_versions(self) -> list[dict[str, Any]]:
        """Manifests, newest first."""
        ...

    def publish(
        self, model_bytes: bytes, manifest: dict[str, Any], promote: bool, actor: str = "gate"
    ) -> str: ...

    def promote(self, version: str, actor: str = "operator") -> None: ...

    def rollback(self, actor: str = "operator") -> str: ...

    def prune(self, keep: int) -> list[str]: ...


def _rollback_target(manifests: list[dict[str, Any]], current: str) -> dict[str, Any]:
    previous = [
        m for m in manifests if m["version"] != current and m.get("status") == STATUS_PROMOTED
    ]
    if not previous:
        raise RegistryError(f"nothing to roll back to: no promoted version other than {current}")
    return max(previous, key=lambda m: (str(m.get("promoted_at") or ""), m["version"]))


def _to_prune(manifests: list[dict[str, Any]], current: str | None, keep: int) -> list[str]:
    if keep < 1:
        raise RegistryError(f"keep={keep}: at least one version must be kept")
    ordered = sorted(manifests, key=lambda m: (_created_ms(m), m["version"]), reverse=True)
    return [m["version"] for m in ordered[keep:] if m["version"] != current]


# --- directory backend -----------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _json_bytes(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


class DirectoryRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = root / "versions"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def current_version(self) -> str | None:
        path = self.root / "current"
        if not path.exists():
            return None
        value = json.loads(path.read_text()).get("version")
        return str(value) if value else None

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.versions / version / "manifest.json"
        if not path.exists():
            raise RegistryError(f"no version {version!r} in {self.root}")
        value: dict[str, Any] = json.loads(path.read_text())
        return value

    def fetch(self, version: str) -> tuple[bytes, dict[str, Any]]:
        manifest = self.manifest(version)
        data = (self.versions / version / "model.onnx").read_bytes()
        verify(data, manifest)
        return data, manifest

    def list_versions(self) -> list[dict[str, Any]]:
        if not self.versions.exists():
            return []
        out = [self.manifest(p.name) for p in self.versions.iterdir() if p.is_dir()]
        return sorted(out, key=lambda m: (_created_ms(m), m["version"]), reverse=True)

    def _set_current(self, version: str) -> None:
        _write_atomic(self.root / "current", _json_bytes({"version": version}))

    def _save_manifest(self, manifest: dict[str, Any]) -> None:
        _write_atomic(self.versions / manifest["version"] / "manifest.json", _json_bytes(manifest))

    def publish(
        self, model_bytes: bytes, manifest: dict[str, Any], promote: bool, actor: str = "gate"
    ) -> str:
        version = str(manifest["version"])
        manifest = dict(manifest)
        verify(model_bytes, manifest)
        with self._locked():
            if (self.versions / version).exists():
                raise RegistryError(f"version {version} already exists in {self.root}")
            manifest["parent_version"] = self.current_version()
            _event(manifest, "published", actor)
            if promote:
                manifest["status"] = STATUS_PROMOTED
                manifest["promoted_at"] = now_iso()
                _event(manifest, "promoted", actor)
            staging = self.root / ".staging" / f"{version}.{os.getpid()}"
            staging.mkdir(parents=True)
            for name, data in (
                ("model.onnx", model_bytes),
                ("manifest.json", _json_bytes(manifest)),
            ):
                with open(staging / name, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            self.versions.mkdir(parents=True, exist_ok=True)
            os.rename(staging, self.versions / version)
            if promote:
                self._set_current(version)
        return version

    def promote(self, version: str, actor: str = "operator") -> None:
        with self._locked():
            manifest = self.manifest(version)
            manifest["status"] = STATUS_PROMOTED
            manifest["promoted_at"] = now_iso()
            _event(manifest, "promoted", actor)
            self._save_manifest(manifest)
            self._set_current(version)

    def rollback(self, actor: str = "operator") -> str:
        with self._locked():
            current = self.current_version()
            if current is None:
                raise RegistryError("nothing to roll back: no current version")
            target = _rollback_target(self.list_versions(), current)
            old = self.manifest(current)
            old["status"] = STATUS_ROLLED_BACK
            _event(old, "rolled_back", actor, f"current is now {target['version']}")
            self._save_manifest(old)
            _event(target, "restored", actor, f"rollback from {current}")
            target["promoted_at"] = now_iso()
            self._save_manifest(target)
            self._set_current(target["version"])
            return str(target["version"])

    def prune(self, keep: int) -> list[str]:
        with self._locked():
            doomed = _to_prune(self.list_versions(), self.current_version(), keep)
            for version in doomed:
                # rename first so a reader never sees a half-deleted directory
                trash = self.root / ".staging" / f"deleted-{version}.{os.getpid()}"
                trash.parent.mkdir(parents=True, exist_ok=True)
                os.rename(self.versions / version, trash)
                shutil.rmtree(trash)
            return doomed


# --- Redis backend ---------------------------------------------------------------------------


def redis_onnx_key(version: str) -> str:
    return f"{REDIS_PREFIX}:{version}:onnx"


def redis_manifest_key(version: str) -> str:
    return f"{REDIS_PREFIX}:{version}:manifest"


class RedisRegistry:
    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url)

    def close(self) -> None:
        self.client.close()

    def current_version(self) -> str | None:
        value = self.client.get(REDIS_CURRENT)
        return value.decode() if isinstance(value, bytes) else None

    def manifest(self, version: str) -> dict[str, Any]:
        raw = self.client.get(redis_manifest_key(version))
        if not isinstance(raw, bytes):
            raise RegistryError(f"no version {version!r} in {self.url}")
        value: dict[str, Any] = json.loads(raw)
        return value

    def fetch(self, version: str) -> tuple[bytes, dict[str, Any]]:
        data, raw = self.client.mget([redis_onnx_key(version), redis_manifest_key(version)])
        if not isinstance(data, bytes) or not isinstance(raw, bytes):
            raise RegistryError(f"no version {version!r} in {self.url}")
        manifest: dict[str, Any] = json.loads(raw)
        verify(data, manifest)
        return data, manifest

    def list_versions(self) -> list[dict[str, Any]]:
        versions = [
            v.decode() for v in cast(list[bytes], self.client.zrevrange(REDIS_VERSIONS, 0, -1))
        ]
        if not versions:
            return []
        raws = self.client.mget([redis_manifest_key(v) for v in versions])
        out = [json.loads(r) for r in raws if isinstance(r, bytes)]
        return sorted(out, key=lambda m: (_created_ms(m), m["version"]), reverse=True)

    def _event_payload(self, version: str, previous: str | None, event: str) -> str:
        return json.dumps({"event": event, "version": version, "previous": previous})

    def publish(
        self, model_bytes: bytes, manifest: dict[str, Any], promote: bool, actor: str = "gate"
    ) -> str:
        import redis

        version = str(manifest["version"])
        manifest = dict(manifest)
        verify(model_bytes, manifest)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(REDIS_CURRENT, redis_manifest_key(version))  # type: ignore[no-untyped-call]
                if pipe.exists(redis_manifest_key(version)):
                    raise RegistryError(f"version {version} already exists in {self.url}")
                raw = pipe.get(REDIS_CURRENT)
                previous = raw.decode() if isinstance(raw, bytes) else None
                manifest["parent_version"] = previous
                _event(manifest, "published", actor)
                if promote:
                    manifest["status"] = STATUS_PROMOTED
                    manifest["promoted_at"] = now_iso()
                    _event(manifest, "promoted", actor)
                pipe.multi()
                pipe.set(redis_onnx_key(version), model_bytes)
                pipe.set(redis_manifest_key(version), json.dumps(manifest, sort_keys=True))
                pipe.zadd(REDIS_VERSIONS, {version: _created_ms(manifest)})
                if promote:
                    pipe.set(REDIS_CURRENT, version)
                    pipe.publish(REDIS_EVENTS, self._event_payload(version, previous, "promoted"))
                pipe.execute()
            except redis.WatchError:
                raise RegistryError("the registry changed during publish; try again") from None
        return version

    def _switch(self, version: str, updates: list[dict[str, Any]], event: str) -> None:
        """Set current to ``version`` and save ``updates`` atomically, if current is unchanged."""
        import redis

        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(REDIS_CURRENT)  # type: ignore[no-untyped-call]
                raw = pipe.get(REDIS_CURRENT)
                previous = raw.decode() if isinstance(raw, bytes) else None
                pipe.multi()
                for manifest in updates:
                    pipe.set(
                        redis_manifest_key(manifest["version"]),
                        json.dumps(manifest, sort_keys=True),
                    )
                pipe.set(REDIS_CURRENT, version)
                pipe.publish(REDIS_EVENTS, self._event_payload(version, previous, event))
                pipe.execute()
            except redis.WatchError:
                raise RegistryError("current changed meanwhile; try again") from None

    def promote(self, version: str, actor: str = "operator") -> None:
        manifest = self.manifest(version)
        manifest["status"] = STATUS_PROMOTED
        manifest["promoted_at"] = now_iso()
        _event(manifest, "promoted", actor)
        self._switch(version, [manifest], "promoted")

    def rollback(self, actor: str = "operator") -> str:
        current = self.current_version()
        if current is None:
            raise RegistryError("nothing to roll back: no current version")
        target = _rollback_target(self.list_versions(), current)
        old = self.manifest(current)
        old["status"] = STATUS_ROLLED_BACK
        _event(old, "rolled_back", actor, f"current is now {target['version']}")
        _event(target, "restored", actor, f"rollback from {current}")
        target["promoted_at"] = now_iso()
        self._switch(str(target["version"]), [old, target], "rolled_back")
        return str(target["version"])

    def prune(self, keep: int) -> list[str]:
        import redis

        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(REDIS_CURRENT, REDIS_VERSIONS)  # type: ignore[no-untyped-call]
                raw = pipe.get(REDIS_CURRENT)
                current = raw.decode() if isinstance(raw, bytes) else None
                doomed = _to_prune(self.list_versions(), current, keep)
                pipe.multi()
                for version in doomed:
                    pipe.delete(redis_onnx_key(version), redis_manifest_key(version))
                    pipe.zrem(REDIS_VERSIONS, version)
                pipe.execute()
            except redis.WatchError:
                raise RegistryError("the registry changed during prune; try again") from None
        return doomed


def open_registry(target: str) -> DirectoryRegistry | RedisRegistry:
    """``redis://host:port/db`` (or ``rediss://``) for Redis, anything else is a directory."""
    if target.startswith(("redis://", "rediss://", "unix://")):
        return RedisRegistry(target)
    return DirectoryRegistry(Path(target))
