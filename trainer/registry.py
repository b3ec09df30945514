"""Model registry: versioned artifacts, atomic publish, promotion gate, promote and rollback.

This module imports only the standard library, ``redis``, ``streamer.core`` and
``streamer.io.files`` (the atomic write): no torch, so operators'
``promote``/``rollback``/``list`` commands start fast.

The layout, the keys, the version-name rule and the manifest fields every reader relies on are
the registry contract, ``streamer.core.contracts.registry``: the streamer reads with it, this
module writes with it, and a version whose name breaks the rule is never published.

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
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from streamer.core.contracts import registry as contract
from streamer.core.timefmt import iso_now_micros, parse_iso_ms
from streamer.io.files import atomic_write_bytes

if TYPE_CHECKING:
    from streamer.io.redis_clients import SyncClient

STATUS_CANDIDATE = "candidate"
STATUS_PROMOTED = "promoted"
STATUS_ROLLED_BACK = "rolled_back"
DEFAULT_KEEP = 10


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message says why."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _created_ms(manifest: dict[str, Any]) -> int:
    return parse_iso_ms(str(manifest["created_at"]))


def _decode_manifest(raw: bytes, where: str) -> dict[str, Any]:
    try:
        return contract.decode_manifest(raw)
    except contract.RegistryFormatError as exc:
        raise RegistryError(f"{where}: {exc}") from None


def verify(model_bytes: bytes, manifest: dict[str, Any]) -> None:
    """The check every reader must make before loading a model."""
    digest = sha256_hex(model_bytes)
    try:
        expected: str | None = contract.read_manifest(manifest).sha256
    except contract.RegistryFormatError:
        expected = None
    if digest != expected:
        raise RegistryError(
            f"version {manifest.get('version')}: sha256 {digest} does not match the manifest's "
            f"{manifest.get('sha256')}"
        )


def _checked_version(manifest: dict[str, Any]) -> str:
    """The manifest's version, if readers will accept its name (the contract's rule)."""
    version = str(manifest["version"])
    if not contract.is_valid_version(version):
        raise RegistryError(f"version {version!r} is not a valid registry version name")
    return version


def _to_publish(model_bytes: bytes, manifest: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The version and a copy of ``manifest`` to publish, once readers would accept both."""
    version = _checked_version(manifest)
    manifest = dict(manifest)
    verify(model_bytes, manifest)
    return version, manifest


def _newest_first(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(manifests, key=lambda m: (_created_ms(m), m["version"]), reverse=True)


# --- the promotion gate ----------------------------------------------------------------------


def common_levels(*level_sets: Sequence[float]) -> tuple[float, ...]:
    """The quantile levels every one of ``level_sets`` has, in increasing order.

    Pinball losses compare only at the same levels: a tail level's loss is far smaller than the
    median's, so a mean over 0.05..0.95 is lower than a mean over 0.1/0.5/0.9 for the same band.
    """
    if not level_sets:
        return ()
    shared = set(level_sets[0]).intersection(*level_sets[1:])
    return tuple(sorted(shared))


def pinball_at(row: dict[str, Any], levels: Sequence[float], at: Sequence[float]) -> float:
    """Mean pinball loss (bp) of one evaluation row over the levels ``at``, from its per-level
    figures ``row["pinball_levels_bps"]`` (aligned with ``levels``, the contender's own)."""
    per_level = row["pinball_levels_bps"]
    missing = [q for q in at if q not in levels]
    if missing or not at:
        raise ValueError(f"pinball wanted at levels {list(at)}; the contender has {list(levels)}")
    return sum(float(per_level[list(levels).index(q)]) for q in at) / len(at)


@dataclass(frozen=True, slots=True)
class GateFigures:
    """Mean figures over the compared horizons, all on the same evaluation origins (bp); every
    pinball figure is the mean over ``levels``, the levels the candidate and the current model
    both have (the baselines are scored at every level of every contender)."""

    candidate_pinball: float
    ewma_pinball: float
    har_pinball: float
    candidate_mae: float
    persistence_mae: float
    current_pinball: float | None = None
    horizons: int = 0
    window: dict[str, str] = field(default_factory=dict)
    levels: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate_pinball_bps": self.candidate_pinball,
            "ewma_pinball_bps": self.ewma_pinball,
            "har_pinball_bps": self.har_pinball,
            "current_pinball_bps": self.current_pinball,
            "candidate_mae_bps": self.candidate_mae,
            "persistence_mae_bps": self.persistence_mae,
            "horizons": self.horizons,
            "levels": list(self.levels),
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
    """Extract the gate's figures from an evaluation report that scored both models.

    The rule: every contender is compared at the same horizons (those both models have) and the
    same levels (those both models have; the candidate's own when there is no current model),
    pooled over all series. The EWMA and HAR bands are scored at every level any contender has,
    so they are taken at exactly those levels too.
    """
    contenders = report["all"]["contenders"]
    names = [candidate] + ([current] if current else [])
    horizons = min(len(contenders[n]["per_h"]) for n in names)
    levels = common_levels(*(contenders[n]["levels"] for n in names))

    def mean(name: str, key: str) -> float:
        rows = contenders[name]["per_h"][:horizons]
        return sum(float(r[key]) for r in rows) / horizons

    def pinball(name: str) -> float:
        own = contenders[name]["levels"]
        rows = contenders[name]["per_h"][:horizons]
        return sum(pinball_at(r, own, levels) for r in rows) / horizons

    return GateFigures(
        candidate_pinball=pinball(candidate),
        ewma_pinball=pinball("ewma_band"),
        har_pinball=pinball("har_band"),
        candidate_mae=mean(candidate, "mae_bps"),
        persistence_mae=mean("persistence", "mae_bps"),
        current_pinball=pinball(current) if current else None,
        horizons=horizons,
        window=dict(report.get("eval", {})),
        levels=levels,
    )


def gate(figures: GateFigures) -> GateDecision:
    """Promote only if pinball beats the current model and both classical bands (EWMA and
    HAR-seasonal), and the median is no worse than persistence; otherwise say which condition
    failed, with the numbers."""
    reasons = []
    ok = True
    f = figures
    if f.levels:
        shown = ", ".join(f"{q:g}" for q in f.levels)
        reasons.append(f"pinball compared at levels {shown} over {f.horizons} horizons")
    for band, band_pinball in (("EWMA band", f.ewma_pinball), ("HAR band", f.har_pinball)):
        if f.candidate_pinball < band_pinball:
            reasons.append(f"pinball {f.candidate_pinball:.4f} bp < {band} {band_pinball:.4f} bp")
        else:
            ok = False
            reasons.append(
                f"pinball {f.candidate_pinball:.4f} bp does not beat the {band} "
                f"{band_pinball:.4f} bp"
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
        "manifest": contract.MANIFEST_SCHEMA,
        "version": version,
        "sha256": sha256_hex(model_bytes),
        "size_bytes": len(model_bytes),
        "created_at": iso_now_micros(),
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
    entry = {"at": iso_now_micros(), "event": event, "by": actor}
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


def _promoted(manifest: dict[str, Any], actor: str) -> dict[str, Any]:
    """``manifest`` marked promoted now, by ``actor``."""
    manifest["status"] = STATUS_PROMOTED
    manifest["promoted_at"] = iso_now_micros()
    _event(manifest, "promoted", actor)
    return manifest


def _published(manifest: dict[str, Any], parent: str | None, promote: bool, actor: str) -> None:
    """``manifest`` marked published now on top of ``parent``, and promoted if asked."""
    manifest["parent_version"] = parent
    _event(manifest, "published", actor)
    if promote:
        _promoted(manifest, actor)


def _rolled_back(registry: Registry, actor: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The current version's manifest marked rolled back and the one before it restored, for
    either registry to save and switch to."""
    current = registry.current_version()
    if current is None:
        raise RegistryError("nothing to roll back: no current version")
    target = _rollback_target(registry.list_versions(), current)
    old = registry.manifest(current)
    old["status"] = STATUS_ROLLED_BACK
    _event(old, "rolled_back", actor, f"current is now {target['version']}")
    _event(target, "restored", actor, f"rollback from {current}")
    target["promoted_at"] = iso_now_micros()
    return old, target


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
    return [m["version"] for m in _newest_first(manifests)[keep:] if m["version"] != current]


# --- directory backend -----------------------------------------------------------------------


class DirectoryRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = root / contract.VERSIONS_DIR

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _version_dir(self, version: str) -> Path:
        return Path(contract.version_dir(self.root, version))

    def current_version(self) -> str | None:
        path = self.root / contract.CURRENT_FILE
        if not path.exists():
            return None
        try:
            return contract.decode_current(path.read_bytes())
        except contract.RegistryFormatError as exc:
            raise RegistryError(f"{path}: {exc}") from None

    def manifest(self, version: str) -> dict[str, Any]:
        path = self._version_dir(version) / contract.MANIFEST_FILE
        if not contract.is_valid_version(version) or not path.exists():
            raise RegistryError(f"no version {version!r} in {self.root}")
        return _decode_manifest(path.read_bytes(), str(path))

    def fetch(self, version: str) -> tuple[bytes, dict[str, Any]]:
        manifest = self.manifest(version)
        data = (self._version_dir(version) / contract.MODEL_FILE).read_bytes()
        verify(data, manifest)
        return data, manifest

    def list_versions(self) -> list[dict[str, Any]]:
        if not self.versions.exists():
            return []
        names = [p.name for p in self.versions.iterdir() if p.is_dir()]
        out = [self.manifest(name) for name in names if contract.is_valid_version(name)]
        return _newest_first(out)

    def _set_current(self, version: str) -> None:
        atomic_write_bytes(self.root / contract.CURRENT_FILE, contract.encode_current(version))

    def _save_manifest(self, manifest: dict[str, Any]) -> None:
        path = self._version_dir(manifest["version"]) / contract.MANIFEST_FILE
        atomic_write_bytes(path, contract.encode_manifest(manifest))

    def publish(
        self, model_bytes: bytes, manifest: dict[str, Any], promote: bool, actor: str = "gate"
    ) -> str:
        version, manifest = _to_publish(model_bytes, manifest)
        with self._locked():
            if self._version_dir(version).exists():
                raise RegistryError(f"version {version} already exists in {self.root}")
            _published(manifest, self.current_version(), promote, actor)
            staging = self.root / ".staging" / f"{version}.{os.getpid()}"
            staging.mkdir(parents=True)
            for name, data in (
                (contract.MODEL_FILE, model_bytes),
                (contract.MANIFEST_FILE, contract.encode_manifest(manifest)),
            ):
                atomic_write_bytes(staging / name, data)  # complete and on disk before the rename
            self.versions.mkdir(parents=True, exist_ok=True)
            os.rename(staging, self._version_dir(version))
            if promote:
                self._set_current(version)
        return version

    def promote(self, version: str, actor: str = "operator") -> None:
        with self._locked():
            manifest = _promoted(self.manifest(version), actor)
            self._save_manifest(manifest)
            self._set_current(version)

    def rollback(self, actor: str = "operator") -> str:
        with self._locked():
            old, target = _rolled_back(self, actor)
            self._save_manifest(old)
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
                os.rename(self._version_dir(version), trash)
                shutil.rmtree(trash)
            return doomed


# --- Redis backend ---------------------------------------------------------------------------


class RedisRegistry:
    """The registry in Redis: one server, a Redis Cluster or a Sentinel-watched primary (any
    URL of ``streamer.core.redis_url``). On a cluster the keys carry a hash tag that puts them
    in one slot, so the transactions below still run; the announcement is published after the
    transaction there, since a cluster transaction cannot carry a keyless PUBLISH."""

    def __init__(self, url: str) -> None:
        import redis

        from streamer.core.redis_url import RedisMode, parse_redis_url
        from streamer.io.redis_clients import sync_client

        self.url = url
        target = parse_redis_url(url)
        self.cluster = target.cluster
        self.keys = contract.redis_keys(target.cluster)
        self.client: SyncClient = (
            redis.Redis.from_url(url) if target.mode is RedisMode.SINGLE else sync_client(target)
        )

    def close(self) -> None:
        self.client.close()

    def current_version(self) -> str | None:
        value = self.client.get(self.keys.current)
        return value.decode() if isinstance(value, bytes) else None

    def manifest(self, version: str) -> dict[str, Any]:
        key = self.keys.manifest(version)
        raw = self.client.get(key)
        if not isinstance(raw, bytes):
            raise RegistryError(f"no version {version!r} in {self.url}")
        return _decode_manifest(raw, key)

    def fetch(self, version: str) -> tuple[bytes, dict[str, Any]]:
        key = self.keys.manifest(version)
        data, raw = self.client.mget([self.keys.onnx(version), key])
        if not isinstance(data, bytes) or not isinstance(raw, bytes):
            raise RegistryError(f"no version {version!r} in {self.url}")
        manifest = _decode_manifest(raw, key)
        verify(data, manifest)
        return data, manifest

    def list_versions(self) -> list[dict[str, Any]]:
        versions = [
            v.decode() for v in cast(list[bytes], self.client.zrevrange(self.keys.versions, 0, -1))
        ]
        if not versions:
            return []
        keys = [self.keys.manifest(v) for v in versions]
        raws = self.client.mget(keys)
        out = [
            _decode_manifest(r, k) for k, r in zip(keys, raws, strict=True) if isinstance(r, bytes)
        ]
        return _newest_first(out)

    def publish(
        self, model_bytes: bytes, manifest: dict[str, Any], promote: bool, actor: str = "gate"
    ) -> str:
        import redis

        version, manifest = _to_publish(model_bytes, manifest)
        manifest_key = self.keys.manifest(version)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.keys.current, manifest_key)
                if pipe.exists(manifest_key):
                    raise RegistryError(f"version {version} already exists in {self.url}")
                raw = pipe.get(self.keys.current)
                previous = raw.decode() if isinstance(raw, bytes) else None
                _published(manifest, previous, promote, actor)
                pipe.multi()
                pipe.set(self.keys.onnx(version), model_bytes)
                pipe.set(manifest_key, contract.encode_manifest(manifest))
                pipe.zadd(self.keys.versions, {version: _created_ms(manifest)})
                event = contract.encode_event("promoted", version, previous)
                if promote:
                    pipe.set(self.keys.current, version)
                    if not self.cluster:
                        pipe.publish(contract.EVENTS_CHANNEL, event)
                pipe.execute()
            except redis.WatchError:
                raise RegistryError("the registry changed during publish; try again") from None
        if promote and self.cluster:
            self.client.publish(contract.EVENTS_CHANNEL, event)
        return version

    def _switch(self, version: str, updates: list[dict[str, Any]], event: str) -> None:
        """Set current to ``version`` and save ``updates`` atomically, if current is unchanged."""
        import redis

        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.keys.current)
                raw = pipe.get(self.keys.current)
                previous = raw.decode() if isinstance(raw, bytes) else None
                pipe.multi()
                for manifest in updates:
                    pipe.set(
                        self.keys.manifest(manifest["version"]),
                        contract.encode_manifest(manifest),
                    )
                pipe.set(self.keys.current, version)
                message = contract.encode_event(event, version, previous)
                if not self.cluster:
                    pipe.publish(contract.EVENTS_CHANNEL, message)
                pipe.execute()
            except redis.WatchError:
                raise RegistryError("current changed meanwhile; try again") from None
        if self.cluster:
            self.client.publish(contract.EVENTS_CHANNEL, message)

    def promote(self, version: str, actor: str = "operator") -> None:
        self._switch(version, [_promoted(self.manifest(version), actor)], "promoted")

    def rollback(self, actor: str = "operator") -> str:
        old, target = _rolled_back(self, actor)
        self._switch(str(target["version"]), [old, target], "rolled_back")
        return str(target["version"])

    def prune(self, keep: int) -> list[str]:
        import redis

        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.keys.current, self.keys.versions)
                raw = pipe.get(self.keys.current)
                current = raw.decode() if isinstance(raw, bytes) else None
                doomed = _to_prune(self.list_versions(), current, keep)
                pipe.multi()
                for version in doomed:
                    pipe.delete(self.keys.onnx(version), self.keys.manifest(version))
                    pipe.zrem(self.keys.versions, version)
                pipe.execute()
            except redis.WatchError:
                raise RegistryError("the registry changed during prune; try again") from None
        return doomed


def open_registry(target: str) -> DirectoryRegistry | RedisRegistry:
    """A Redis URL (``redis://host:port/db``, ``rediss://``, ``redis+cluster://``,
    ``redis+sentinel://``) for Redis, anything else is a directory."""
    from streamer.core.redis_url import is_redis_url

    if is_redis_url(target):
        return RedisRegistry(target)
    return DirectoryRegistry(Path(target))
