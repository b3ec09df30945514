"""The compose stack and the container files, checked without a container engine.

No Docker or Podman engine runs here, so nothing is built or started: the compose file must
parse, every file, directory and build it references must exist in the repository, every
command must parse with the real command-line parsers, and every TICKCAST_* name must be a
real setting. The Mosquitto configuration is started with a real broker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from deploy_paths import DEPLOY, REPO, setting_env_names
from support.servers import ServerProcess, free_port, require

DOCKER = DEPLOY / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
PINNED_IMAGE = re.compile(r"^[a-z0-9./-]+:[A-Za-z0-9._-]+$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def test_the_stack_has_every_part(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == {
        "redis",
        "mosquitto",
        "replay",
        "streamer",
        "trainer",
        "prometheus",
        "grafana",
    }


def test_builds_and_images_exist(compose: dict[str, Any]) -> None:
    built = 0
    for name, service in services(compose).items():
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert context == REPO, name
            assert (context / service["build"]["dockerfile"]).is_file(), name
            built += 1
        else:  # an outside image, pinned to a version
            assert PINNED_IMAGE.match(service["image"]), name
            assert not service["image"].endswith(":latest"), name
    assert built == 3  # replay and streamer (one image), trainer


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    mounts = 0
    for name, service in services(compose).items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), (name, source)
                mounts += 1
            else:
                assert source in compose["volumes"], (name, source)
    assert mounts == 4  # mosquitto.conf, prometheus/, grafana provisioning and dashboards


def test_streamer_environment_is_valid_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamer.settings import load_settings

    env = services(compose)["streamer"]["environment"]
    assert sorted(set(env) - setting_env_names()) == []
    for name in [k for k in os.environ if k.startswith("TICKCAST_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.clock == "watermark"  # replayed 2023 data: never wall-clock bars
    assert settings.metrics_host == "0.0.0.0"
    assert settings.model_registry == settings.redis_url
    # the feeds point at the replay service, on the ports its command line gives
    replay_args = services(compose)["replay"]["command"]
    for url, flag in (
        (settings.ws_url("binance"), "--port"),
        (settings.rest_url("binance"), "--rest-port"),
    ):
        parsed = urlparse(url)
        assert (parsed.hostname, parsed.port) == (
            "replay",
            int(replay_args[replay_args.index(flag) + 1]),
        )
    for server in (settings.redis_url, settings.mqtt_url):
        assert server is not None and urlparse(server).hostname in services(compose)


def test_commands_parse_with_the_real_clis(compose: dict[str, Any]) -> None:
    from streamer.cli import build_parser as streamer_parser
    from trainer.cli import build_parser as trainer_parser

    replay = streamer_parser().parse_args(services(compose)["replay"]["command"])
    assert (replay.command, replay.host, replay.loop) == ("replay-server", "0.0.0.0", True)
    train = trainer_parser().parse_args(services(compose)["trainer"]["command"])
    assert train.command == "schedule"
    assert train.registry == services(compose)["streamer"]["environment"]["TICKCAST_MODEL_REGISTRY"]
    # the trainer image copies models/ to /app/models
    assert "COPY models /app/models" in (DOCKER / "trainer.Containerfile").read_text()
    assert str(train.config).startswith("/app/models/")
    assert (REPO / str(train.config).removeprefix("/app/")).is_file()


def test_prometheus_and_grafana_wiring(compose: dict[str, Any]) -> None:
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [
        t
        for job in prometheus["scrape_configs"]
        for c in job["static_configs"]
        for t in c["targets"]
    ]
    streamer_env = services(compose)["streamer"]["environment"]
    assert f"streamer:{streamer_env['TICKCAST_METRICS_PORT']}" in targets
    for rule_file in prometheus["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()
    grafana = services(compose)["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    provisioning = DOCKER / next(s for s, t in mounts.items() if t == "/etc/grafana/provisioning")
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert urlparse(source["url"]).hostname == "prometheus"
    assert urlparse(source["url"]).port == 9090
    providers = yaml.safe_load((provisioning / "dashboards" / "tickcast.yml").read_text())
    (provider,) = providers["providers"]
    dashboards = DOCKER / next(s for s, t in mounts.items() if t == provider["options"]["path"])
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).name).is_file()
    dashboard = json.loads((dashboards / Path(home).name).read_text())
    assert dashboard["uid"] == "tickcast-overview"


def containerfile_copies(path: Path) -> list[str]:
    sources = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not parts[1].startswith("--from"):
            sources.extend(parts[1:-1])
    return sources


@pytest.mark.parametrize("name", ["streamer.Containerfile", "trainer.Containerfile"])
def test_containerfiles_copy_files_that_exist_and_drop_root(name: str) -> None:
    path = DOCKER / name
    sources = containerfile_copies(path)
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
    text = path.read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert (DOCKER / f"{name}.dockerignore").is_file()


def test_streamer_image_is_slim_and_checked() -> None:
    text = (DOCKER / "streamer.Containerfile").read_text()
    commands = " ".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "pip install . " in commands and "[train]" not in commands
    assert "torch" not in commands.replace('! /opt/tickcast/bin/python -c "import torch"', "")
    assert "HEALTHCHECK" in commands and "/healthz" in commands


def test_trainer_image_pins_cpu_torch() -> None:
    text = (DOCKER / "trainer.Containerfile").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    (pin,) = re.findall(r'"torch==([0-9.]+)"', pyproject)
    assert f"ARG TORCH_VERSION={pin}" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert 'pip install ".[train]"' in text


@pytest.mark.integration
def test_mosquitto_conf_starts_a_broker(tmp_path: Path) -> None:
    text = (DOCKER / "mosquitto.conf").read_text()
    assert re.search(r"^set_tcp_nodelay true$", text, re.M)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text.replace("listener 1883\n", f"listener {port} 127.0.0.1\n"))
    broker = ServerProcess("mosquitto", port, [require("mosquitto"), "-c", str(conf)])
    broker.start()  # waits for the port; a bad option makes mosquitto exit instead
    try:
        assert broker.proc is not None and broker.proc.poll() is None
    finally:
        broker.stop()
    bad = tmp_path / "bad.conf"
    bad.write_text(conf.read_text() + "set_tcp_nodelayy true\n")
    result = subprocess.run(
        [require("mosquitto"), "-c", str(bad)], capture_output=True, text=True, timeout=10
    )
    assert result.returncode != 0
