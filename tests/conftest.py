"""Shared fixtures: real redis-server and Mosquitto processes on free loopback ports, started by
``support.servers`` for tests marked ``integration`` (a test without the mark errors)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.servers import (
    ServerProcess,
    durable_redis_process,
    free_port,
    mosquitto_process,
    redis_process,
    serve,
    wait_for_port,
)

# still imported from here by some test modules
__all__ = ["ServerProcess", "free_port", "wait_for_port"]


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    yield from serve(request, redis_process(tmp_path))


@pytest.fixture
def durable_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """redis-server with an fsync-always append-only file: a SIGKILL loses nothing acknowledged."""
    yield from serve(request, durable_redis_process(tmp_path))


@pytest.fixture
def mosquitto_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    yield from serve(request, mosquitto_process(tmp_path))
