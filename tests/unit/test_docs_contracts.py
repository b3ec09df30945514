"""docs/contracts.md says what streamer/core/contracts/ does: the JSON Schemas in it are those of
the payload Structs, and every key, file name, metadata key and topic it names is the code's.

After changing a payload Struct, regenerate the schema blocks with
``.venv/bin/python tests/unit/test_docs_contracts.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from streamer.core.contracts import model, mqtt, redis_bars, registry

CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"
_BLOCK = re.compile(
    r"<!-- BEGIN SCHEMA (?P<name>\w+) -->\n(?P<body>.*?)<!-- END SCHEMA (?P=name) -->", re.S
)


def render(text: str) -> str:
    """``text`` with each schema block rewritten from ``mqtt.json_schemas()``."""
    schemas = mqtt.json_schemas()

    def block(match: re.Match[str]) -> str:
        name = match["name"]
        body = json.dumps(schemas[name], indent=2)
        return f"<!-- BEGIN SCHEMA {name} -->\n```json\n{body}\n```\n<!-- END SCHEMA {name} -->"

    return _BLOCK.sub(block, text)


def _doc() -> str:
    return CONTRACTS.read_text(encoding="utf-8")


def _section(title: str) -> str:
    """The text of the ``## title`` section."""
    text = _doc()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _code(text: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", text))


def test_schema_blocks_are_the_json_schema_of_the_structs() -> None:
    blocks = {m["name"]: m["body"] for m in _BLOCK.finditer(_doc())}
    assert sorted(blocks) == sorted(mqtt.json_schemas())
    for name, body in blocks.items():
        fenced = re.fullmatch(r"```json\n(.*)\n```\n", body, re.S)
        assert fenced is not None, f"schema block {name} is not one ```json block"
        assert json.loads(fenced[1]) == mqtt.json_schemas()[name], (
            f"docs/contracts.md schema {name} is stale: run "
            ".venv/bin/python tests/unit/test_docs_contracts.py"
        )
    assert render(_doc()) == _doc()


def test_model_section_names_the_contracts_tensors_and_exactly_its_metadata_keys() -> None:
    versions = " and ".join(str(v) for v in model.CONTRACTS)
    text = _section(f"Model artifact (contracts {versions})")
    assert f"opset {model.MIN_OPSET} or later" in text
    code = _code(text)
    for name in (model.INPUT_NAME, model.OUTPUT_NAME, model.TENSOR_FLOAT, str(model.INTERVAL_S)):
        assert name in code, name
    for name in (model.TIME_INPUT_NAME, model.TENSOR_INT64, "model_inputs", "check_artifact"):
        assert name in code, name
    assert f"`[batch, window, {model.N_FEATURES}]`" in text
    assert "`[batch]`" in text
    assert {c for c in code if c.startswith("tickcast.")} == set(model.REQUIRED_META)
    # the contract column of the tensor table says which contract feeds which input
    rows = {m[2]: m[1] for m in re.finditer(r"^\| ([0-9, ]+) \| \w+ \| `(\w+)` \|", text, re.M)}
    assert rows == {model.INPUT_NAME: "1, 2", model.TIME_INPUT_NAME: "2", model.OUTPUT_NAME: "1, 2"}
    spec = model.ModelSpec(1, 1, 60, model.DEFAULT_LEVELS_V2, "v", {}, {}, contract=2)
    assert spec.input_names == (model.INPUT_NAME, model.TIME_INPUT_NAME)
    assert f"`{spec.to_metadata()[model.META_QUANTILES]}`" in text  # the default levels
    values = re.search(r"\| `tickcast\.contract` \| `1` or `2`;", text)
    assert values is not None and model.CONTRACTS == (1, 2)


def test_mqtt_section_names_the_topics_and_its_example_is_a_valid_payload() -> None:
    text = _section("MQTT")
    code = _code(text)
    assert mqtt.forecast_topic("{prefix}", "{exchange}", "{symbol}") in code
    assert mqtt.skill_topic("{prefix}", "{exchange}", "{symbol}") in code
    assert mqtt.status_topic("{prefix}", "{instance}") in code
    assert {mqtt.STATUS_ONLINE.decode(), mqtt.STATUS_OFFLINE.decode()} <= code
    example = re.search(r"```json\n(\{\"schema\".*?)\n```", text, re.S)
    assert example is not None
    payload = json.loads(example[1])
    assert mqtt.validate_forecast_payload(payload) == []
    assert tuple(payload) == mqtt.FORECAST_FIELDS


def test_redis_section_names_the_bar_keys_and_its_example_bar_decodes() -> None:
    text = _section("Redis bars")
    code = _code(text)
    assert redis_bars.bars_key("{exchange}", "{symbol}") in code
    assert redis_bars.incomplete_key("{exchange}", "{symbol}") in code
    example = next(c for c in code if c.startswith("[1"))
    bar = redis_bars.decode_bar("binance", "BTCUSDT", example)
    assert redis_bars.encode_bar(bar).decode() == example


def test_registry_section_names_every_file_and_key_and_nothing_else() -> None:
    text = _section("Model registry")
    code = _code(text)
    files = {
        f"<root>/{registry.CURRENT_FILE}",
        f"<root>/{registry.VERSIONS_DIR}/<version>/{registry.MODEL_FILE}",
        f"<root>/{registry.VERSIONS_DIR}/<version>/{registry.MANIFEST_FILE}",
    }
    keys = {
        registry.CURRENT_KEY,
        registry.VERSIONS_KEY,
        registry.EVENTS_CHANNEL,
        registry.onnx_key("{version}"),
        registry.manifest_key("{version}"),
    }
    assert files <= code
    assert {c for c in code if c.startswith("<root>/")} == files
    assert {c for c in code if c.startswith(registry.KEY_PREFIX)} == keys
    current = json.loads(registry.encode_current("<version>"))
    assert json.dumps(current) in code
    event = json.loads(registry.encode_event("promoted", "v", None))
    assert "{" + ", ".join(f'"{key}": ...' for key in event) + "}" in code
    assert f"manifest schema {registry.MANIFEST_SCHEMA}" in text
    example = re.search(r"look like `([^`]+)`", text)
    assert example is not None and registry.is_valid_version(example[1])


def test_no_other_redis_key_is_documented() -> None:
    documented = {c for c in _code(_doc()) if re.fullmatch(r"tickcast:[a-z{}:]+", c)}
    known = {
        redis_bars.bars_key("{exchange}", "{symbol}"),
        redis_bars.incomplete_key("{exchange}", "{symbol}"),
        registry.CURRENT_KEY,
        registry.VERSIONS_KEY,
        registry.EVENTS_CHANNEL,
        registry.onnx_key("{version}"),
        registry.manifest_key("{version}"),
    }
    assert documented == known


if __name__ == "__main__":
    CONTRACTS.write_text(render(_doc()), encoding="utf-8")
    print(f"rewrote the schema blocks of {CONTRACTS}")
