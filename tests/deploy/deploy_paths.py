"""Paths and small shared helpers of the deploy tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def setting_env_names() -> set[str]:
    """The environment names the streamer accepts: TICKCAST_<FIELD> and TICKCAST_CONFIG."""
    from streamer.settings import CONFIG_ENV, ENV_PREFIX, Settings

    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields} | {CONFIG_ENV}
