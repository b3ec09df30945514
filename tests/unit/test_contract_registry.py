"""The registry contract shared by the trainer (writer) and the streamer (reader): names, keys,
the version-name rule, the ``current`` pointer and the manifest fields readers rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamer.core.contracts import registry as contract

SHA = "ab" * 32


def test_layout_and_keys() -> None:
    assert contract.version_dir(Path("/reg"), "v1") == Path("/reg/versions/v1")
    assert (contract.CURRENT_FILE, contract.MODEL_FILE, contract.MANIFEST_FILE) == (
        "current",
        "model.onnx",
        "manifest.json",
    )
    assert contract.CURRENT_KEY == "tickcast:models:current"
    assert contract.VERSIONS_KEY == "tickcast:models:versions"
    assert contract.EVENTS_CHANNEL == "tickcast:models:events"
    assert contract.onnx_key("v1") == "tickcast:models:v1:onnx"
    assert contract.manifest_key("v1") == "tickcast:models:v1:manifest"


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("20230501T210100Z-1a2b3c4d", True),
        ("v1.2+build:3_x", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        (".", False),
        ("..", False),
        ("../etc", False),
        ("-v1", False),
        ("v 1", False),
        ("v/1", False),
    ],
)
def test_version_names(name: str, valid: bool) -> None:
    assert contract.is_valid_version(name) is valid


def test_current_round_trips_and_refuses_what_readers_cannot_use() -> None:
    raw = contract.encode_current("v7")
    assert json.loads(raw) == {"version": "v7"}
    assert contract.decode_current(raw) == "v7"
    assert contract.decode_current('{"version": "v8", "by": "operator"}') == "v8"
    for bad, message in (
        (b"{", "current is not JSON"),
        (b"[]", "current is not a JSON object"),
        (b'{"version": 7}', 'current has no "version" string'),
        (b'{"version": "../x"}', "version '../x' is not a valid name"),
    ):
        with pytest.raises(contract.RegistryFormatError, match=message):
            contract.decode_current(bad)


def test_manifest_keeps_unknown_fields_and_reads_the_shared_ones() -> None:
    doc = {
        "manifest": 1,
        "version": "v1",
        "sha256": SHA.upper(),
        "created_at": "2023-05-01T00:00:00.000000Z",
        "status": "promoted",
        "gate": {"decision": "promote"},
        "a_field_from_a_later_trainer": [1, 2],
    }
    raw = contract.encode_manifest(doc)
    assert contract.decode_manifest(raw) == doc
    manifest = contract.parse_manifest(raw)
    assert manifest == contract.Manifest(
        sha256=SHA, version="v1", created_at="2023-05-01T00:00:00.000000Z"
    )
    assert manifest.created_at_ms == 1_682_899_200_000


def test_manifest_needs_a_sha256_and_tolerates_odd_optional_fields() -> None:
    odd = contract.read_manifest({"sha256": SHA, "version": 3, "created_at": 1_682_899_200})
    assert (odd.version, odd.created_at, odd.created_at_ms) == (None, None, None)
    assert contract.read_manifest({"sha256": SHA, "created_at": "yesterday"}).created_at_ms is None
    for bad, message in (
        (b"not json", "manifest is not JSON"),
        (b'["sha256"]', "manifest is not a JSON object"),
        (b"{}", "manifest has no valid sha256"),
        (b'{"sha256": "abc"}', "manifest has no valid sha256"),
        (json.dumps({"sha256": "g" * 64}).encode(), "manifest has no valid sha256"),
    ):
        with pytest.raises(contract.RegistryFormatError, match=message):
            contract.parse_manifest(bad)


def test_event_message() -> None:
    assert json.loads(contract.encode_event("promoted", "v2", "v1")) == {
        "event": "promoted",
        "version": "v2",
        "previous": "v1",
    }
