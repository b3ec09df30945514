"""The retraining configuration and the trainer's command lines in the systemd units."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from deploy_paths import DEPLOY, REPO

RETRAIN = DEPLOY / "retrain.toml"


def test_retrain_config_loads(tmp_path: Path) -> None:
    from trainer.pipeline import load_config

    cfg = load_config(RETRAIN, store_override=tmp_path / "history")
    assert cfg.data.store == tmp_path / "history"
    assert cfg.data.symbols == (
        ("binance", "BTCUSDT"),
        ("binance", "ETHUSDT"),
        ("binance", "SOLUSDT"),
    )
    # rolling splits back from the newest bar, for scheduled runs on growing history
    assert (cfg.split.val_days, cfg.split.test_days, cfg.split.train_days) == (1, 1, 28)


def test_retrain_model_is_the_default_models() -> None:
    """Retraining keeps the shipped model's architecture (window, horizon, quantiles...)."""
    retrain = tomllib.loads(RETRAIN.read_text())
    default = tomllib.loads((REPO / "models" / "default" / "train.toml").read_text())
    assert retrain["model"] == default["model"]


def unit_commands(name: str, env: dict[str, str]) -> list[list[str]]:
    """ExecStartPre/ExecStart argv of a unit with ${VAR} and %S expanded as systemd does."""
    commands = []
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if re.match(r"^ExecStart(Pre)?=", line):
            text = line.split("=", 1)[1].replace("%S", "/var/lib")
            text = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], text)
            commands.append(shlex.split(text))
    return commands


def example_env(name: str) -> dict[str, str]:
    out = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_systemd_trainer_commands_parse() -> None:
    from trainer.cli import build_parser

    env = example_env("trainer.env.example")
    (backfill, train) = unit_commands("tickcast-trainer.service", env)
    parser = build_parser()
    fill = parser.parse_args(backfill[1:])
    run = parser.parse_args(train[1:])
    assert (fill.command, run.command) == ("backfill", "train")
    assert fill.store == run.store == Path(env["TICKCAST_HISTORY"])
    assert run.registry == env["TICKCAST_REGISTRY"]
    # the streamer's example watches the registry the trainer publishes to
    assert example_env("streamer.env.example")["TICKCAST_MODEL_REGISTRY"] == run.registry
    assert run.pull_redis == example_env("streamer.env.example")["TICKCAST_REDIS_URL"]
    # it backfills the symbols it trains on
    symbols = tomllib.loads(RETRAIN.read_text())["data"]["symbols"]
    assert fill.symbols.split(",") == symbols
