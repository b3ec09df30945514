"""Where the watcher finds models: the trainer's registries, read-only, and a single file.

directory
    The layout of ``streamer.core.contracts.registry``: ``<root>/current`` names a version,
    ``<root>/versions/<version>/`` holds its ``model.onnx`` and ``manifest.json``.
Redis
    The keys of the same contract. The watcher listens on the events channel for fast reloads
    and polls as well, since pub/sub messages are lost while a connection is down.
single file
    A plain ``.onnx`` path (the demo's default model); no manifest, so no sha256 check. A file
    caught mid-write fails to load and is tried again once its size or mtime changes.

Failures map onto ``streamer.core.retry``: ``RegistryUnavailable`` (a ``Transient``: Redis down,
an unreadable ``current``) is tried again at the next poll; ``ModelRejected`` (a ``Permanent``:
missing parts, a bad manifest) sets the version aside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamer.core.contracts import registry as contract
from streamer.core.redact import redact_url
from streamer.core.redis_url import RedisMode, is_redis_url, parse_redis_url
from streamer.core.retry import RetryPolicy, Transient
from streamer.io.model.session import (
    REASON_CORRUPT,
    REASON_MANIFEST,
    REASON_MISSING,
    ModelRejected,
)
from streamer.io.redis_clients import AsyncClient, async_client

log = logging.getLogger(__name__)


class RegistryUnavailable(Transient):
    """The registry could not be read (Redis down, unreadable ``current``); try again later."""


@dataclass(frozen=True, slots=True)
class Artifact:
    """Bytes of one model version and what its manifest says about them."""

    version: str
    data: bytes
    sha256: str | None
    created_at: str | None
    source: str


class Registry(Protocol):
    """Where the watcher finds models. ``current`` returns a token that changes with the model."""

    name: str

    async def current(self) -> str | None: ...

    async def fetch(self, version: str) -> Artifact: ...

    async def listen(self, wake: asyncio.Event) -> None:
        """Set ``wake`` whenever the registry announces a change; return if it never does."""
        ...


def _artifact(version: str, data: bytes, manifest_raw: bytes | str, source: str) -> Artifact:
    """``data`` with what its manifest says; ModelRejected("manifest") for a bad manifest."""
    try:
        manifest = contract.parse_manifest(manifest_raw)
    except contract.RegistryFormatError as exc:
        raise ModelRejected(REASON_MANIFEST, f"{source}: {exc}") from None
    return Artifact(version, data, manifest.sha256, manifest.created_at, source)


class DirectoryRegistry:
    """The trainer's directory registry (``streamer.core.contracts.registry``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.name = f"dir:{self.root}"

    def _read_current(self) -> str | None:
        path = self.root / contract.CURRENT_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryUnavailable(f"{path}: {exc}") from None
        try:
            return contract.decode_current(raw)
        except contract.RegistryFormatError as exc:
            raise RegistryUnavailable(f"{path}: {exc}") from None

    async def current(self) -> str | None:
        return await asyncio.to_thread(self._read_current)

    def _read(self, version: str) -> Artifact:
        vdir = Path(contract.version_dir(self.root, version))
        try:
            manifest_raw = (vdir / contract.MANIFEST_FILE).read_bytes()
            data = (vdir / contract.MODEL_FILE).read_bytes()
        except FileNotFoundError as exc:
            raise ModelRejected(REASON_MISSING, f"{vdir}: {exc.filename} is missing") from None
        except OSError as exc:
            raise RegistryUnavailable(f"{vdir}: {exc}") from None
        return _artifact(version, data, manifest_raw, f"{self.name}@{version}")

    async def fetch(self, version: str) -> Artifact:
        return await asyncio.to_thread(self._read, version)

    async def listen(self, wake: asyncio.Event) -> None:
        return  # polling only


_REDIS_ERRORS = (redis_errors.RedisError, redis_errors.RedisClusterException, OSError)


class RedisRegistry:
    """The trainer's Redis registry (``streamer.core.contracts.registry``).

    The client must not decode responses (the artifact is bytes); ``from_url`` makes one. On a
    Redis Cluster the keys are ``contract.CLUSTER_KEYS``.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        name: str = "redis",
        resubscribe_initial_s: float = 0.5,
        resubscribe_max_s: float = 30.0,
        keys: contract.RedisKeys = contract.KEYS,
    ) -> None:
        self._client = client
        self._keys = keys
        self.name = name
        self._resubscribe = RetryPolicy(initial_s=resubscribe_initial_s, max_s=resubscribe_max_s)
        self._backoff = self._resubscribe.backoff()
        self.subscribed = False

    @classmethod
    def from_url(cls, url: str, socket_timeout: float = 5.0) -> RedisRegistry:
        """Any Redis URL of ``streamer.core.redis_url``: one server, a cluster, Sentinel."""
        target = parse_redis_url(url)
        if target.mode is not RedisMode.SINGLE:
            client = async_client(target, socket_timeout=socket_timeout)
            return cls(client, name=redact_url(url), keys=contract.redis_keys(target.cluster))
        client = Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )
        return cls(client, name=redact_url(url))

    async def aclose(self) -> None:
        await self._client.aclose()

    def _unavailable(self, exc: BaseException) -> RegistryUnavailable:
        return RegistryUnavailable(f"{self.name}: {type(exc).__name__}: {exc}")

    async def current(self) -> str | None:
        try:
            raw = await self._client.get(self._keys.current)
        except _REDIS_ERRORS as exc:
            raise self._unavailable(exc) from None
        if raw is None:
            return None
        version = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        try:
            return contract.checked_version(version.strip())
        except contract.RegistryFormatError as exc:
            raise RegistryUnavailable(f"{self.name} {self._keys.current}: {exc}") from None

    async def fetch(self, version: str) -> Artifact:
        onnx_key, manifest_key = self._keys.onnx(version), self._keys.manifest(version)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(onnx_key)
                pipe.get(manifest_key)
                data, manifest_raw = await pipe.execute()
        except _REDIS_ERRORS as exc:
            raise self._unavailable(exc) from None
        where = f"{self.name} version {version}"
        if data is None or manifest_raw is None:
            missing = onnx_key if data is None else manifest_key
            raise ModelRejected(REASON_MISSING, f"{where}: {missing} is missing")
        if isinstance(data, str):
            raise ModelRejected(REASON_CORRUPT, f"{where}: client decodes responses; need bytes")
        return _artifact(version, bytes(data), manifest_raw, f"{self.name}@{version}")

    async def listen(self, wake: asyncio.Event, poll_s: float = 1.0) -> None:
        """Follow the events channel; resubscribe with backoff after a lost connection.

        Every (re)subscription also sets ``wake``: announcements sent while the connection was
        down are lost, so the watcher reads ``current`` again.
        """
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(contract.EVENTS_CHANNEL)
                self.subscribed = True
                self._backoff.reset()
                wake.set()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=poll_s
                    )
                    if message is not None and message.get("type") == "message":
                        wake.set()
            except Exception as exc:  # connection loss above all; polling covers meanwhile
                lost = self._unavailable(exc)
                decision = self._resubscribe.decide(lost, self._backoff)
                if not decision.retry:  # not with this policy (no attempt limit); be explicit
                    raise lost from exc
                delay = decision.delay_s
                log.warning("model events: %s; resubscribing in %.1fs", lost, delay)
            finally:
                self.subscribed = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)


class ModelFile:
    """One model file, no registry: the token is (mtime, size), so any rewrite is noticed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"

    def _token(self) -> str | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryUnavailable(f"{self.path}: {exc}") from None
        return f"{st.st_mtime_ns}-{st.st_size}"

    async def current(self) -> str | None:
        return await asyncio.to_thread(self._token)

    def _read(self, version: str) -> Artifact:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise ModelRejected(REASON_MISSING, f"{self.path} is missing") from None
        except OSError as exc:
            raise RegistryUnavailable(f"{self.path}: {exc}") from None
        return Artifact(version, data, None, None, self.name)

    async def fetch(self, version: str) -> Artifact:
        return await asyncio.to_thread(self._read, version)

    async def listen(self, wake: asyncio.Event) -> None:
        return  # polling only


def open_registry(location: str) -> DirectoryRegistry | RedisRegistry | ModelFile:
    """A Redis URL (``redis://``, ``redis+cluster://``, ...), a registry directory, or a single
    ``.onnx`` file."""
    if is_redis_url(location):
        return RedisRegistry.from_url(location)
    path = Path(location)
    if path.is_file() or (not path.exists() and path.suffix == ".onnx"):
        return ModelFile(path)
    return DirectoryRegistry(path)
