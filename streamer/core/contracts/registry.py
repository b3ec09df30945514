"""The model registry contract: where the trainer publishes versions and how readers find them.

Written by ``trainer/registry.py``, read by ``streamer/io/model/registries.py`` (and by any other
tool). Pure: names, keys and the manifest's parser; no files, no sockets.

Directory::

    <root>/current                         {"version": "<version>"}
    <root>/versions/<version>/model.onnx   the artifact
    <root>/versions/<version>/manifest.json

Redis::

    tickcast:models:{version}:onnx       the artifact bytes
    tickcast:models:{version}:manifest   manifest JSON (the same document as manifest.json)
    tickcast:models:current              the current version string
    tickcast:models:versions             sorted set of versions, score = created_at (ms)
    channel tickcast:models:events       JSON {"event", "version", "previous"} when current changes

In a Redis Cluster the keys start with the hash tag ``{tickcast:models}`` instead of
``tickcast:models`` (``{tickcast:models}:current`` and so on; ``CLUSTER_KEYS``), so that all of
them lie in one hash slot and the trainer's transactions over several of them still run; the
channel is the same (a cluster delivers every PUBLISH on every node).

A version name is 1 to 128 characters of ``A-Z a-z 0-9 . _ : + -``, starting with a letter or a
digit (the trainer's are ``20230501T210100Z-1a2b3c4d``): safe as a directory name and inside a
Redis key. A manifest is a JSON object; every reader relies on ``sha256`` (hex of the artifact)
and reads ``version`` and ``created_at`` (ISO-8601 UTC) when present. Writers add more fields
(trainer/registry.py lists its own); readers ignore the fields they do not know.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from streamer.core.timefmt import parse_iso_ms_or_none

MANIFEST_SCHEMA = 1

CURRENT_FILE = "current"
VERSIONS_DIR = "versions"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"

KEY_PREFIX = "tickcast:models"
CURRENT_KEY = f"{KEY_PREFIX}:current"
VERSIONS_KEY = f"{KEY_PREFIX}:versions"
EVENTS_CHANNEL = f"{KEY_PREFIX}:events"

_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


class RegistryFormatError(ValueError):
    """A registry file or key that does not follow this contract; the message says why."""


def is_valid_version(name: str) -> bool:
    return _VERSION_RE.fullmatch(name) is not None


def version_dir(root: PurePath, version: str) -> PurePath:
    """``<root>/versions/<version>``, the directory of one version."""
    return root / VERSIONS_DIR / version


def onnx_key(version: str) -> str:
    return f"{KEY_PREFIX}:{version}:onnx"


def manifest_key(version: str) -> str:
    return f"{KEY_PREFIX}:{version}:manifest"


CLUSTER_KEY_PREFIX = "{tickcast:models}"


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The registry's Redis keys under one prefix: ``KEY_PREFIX``, or on a cluster the hash tag
    ``CLUSTER_KEY_PREFIX`` that puts them all in one slot."""

    prefix: str

    @property
    def current(self) -> str:
        return f"{self.prefix}:current"

    @property
    def versions(self) -> str:
        return f"{self.prefix}:versions"

    def onnx(self, version: str) -> str:
        return f"{self.prefix}:{version}:onnx"

    def manifest(self, version: str) -> str:
        return f"{self.prefix}:{version}:manifest"


KEYS = RedisKeys(KEY_PREFIX)
CLUSTER_KEYS = RedisKeys(CLUSTER_KEY_PREFIX)


def redis_keys(cluster: bool) -> RedisKeys:
    """The keys of a Redis Cluster (``cluster``) or of a single server."""
    return CLUSTER_KEYS if cluster else KEYS


def _json_document(value: Mapping[str, Any]) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def _json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryFormatError(f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RegistryFormatError(f"{what} is not a JSON object")
    return doc


def encode_current(version: str) -> bytes:
    """The directory registry's ``current`` file."""
    return _json_document({"version": version})


def decode_current(raw: bytes | str) -> str:
    """The version a ``current`` file names; RegistryFormatError unless it is a valid name."""
    version = _json_object(raw, "current").get("version")
    if not isinstance(version, str):
        raise RegistryFormatError('current has no "version" string')
    return checked_version(version)


def checked_version(version: str) -> str:
    """``version`` itself, or RegistryFormatError when it is not a valid version name."""
    if not is_valid_version(version):
        raise RegistryFormatError(f"version {version!r} is not a valid name")
    return version


def encode_event(event: str, version: str, previous: str | None) -> str:
    """The message published on ``EVENTS_CHANNEL`` when current changes."""
    return json.dumps({"event": event, "version": version, "previous": previous})


@dataclass(frozen=True, slots=True)
class Manifest:
    """The manifest fields every reader relies on (the document may hold many more)."""

    sha256: str  # lower-case hex
    version: str | None
    created_at: str | None

    @property
    def created_at_ms(self) -> int | None:
        return None if self.created_at is None else parse_iso_ms_or_none(self.created_at)


def encode_manifest(doc: Mapping[str, Any]) -> bytes:
    """A manifest document as the writers store it (indented, keys sorted)."""
    return _json_document(doc)


def decode_manifest(raw: bytes | str) -> dict[str, Any]:
    """The whole manifest document, unknown fields included; RegistryFormatError if not JSON."""
    return _json_object(raw, "manifest")


def read_manifest(doc: Mapping[str, Any]) -> Manifest:
    """The fields readers rely on; RegistryFormatError without a valid ``sha256``.

    Optional fields of the wrong type read as absent: a writer's oddity there must not stop
    a model whose bytes check out.
    """
    sha = doc.get("sha256")
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
        raise RegistryFormatError("manifest has no valid sha256")
    version, created = doc.get("version"), doc.get("created_at")
    return Manifest(
        sha256=sha.lower(),
        version=version if isinstance(version, str) else None,
        created_at=created if isinstance(created, str) else None,
    )


def parse_manifest(raw: bytes | str) -> Manifest:
    """``read_manifest`` of stored manifest bytes."""
    return read_manifest(decode_manifest(raw))
