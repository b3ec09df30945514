"""Hot reload from the model registry: good versions swap in, bad ones are refused and counted
while the old model keeps serving. Directory and single-file backends on tmp_path, the Redis
backend against a real redis-server (conftest ``redis_server``).

Refusals covered: a truncated copy (sha256 differs from the manifest), bytes that are not ONNX
(hashed by a buggy writer, so the sha256 matches and onnxruntime refuses them), a model breaking
the contract, a model whose outputs cross on real windows, and a current pointer to a version
that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures.features import window_array
from fixtures.models import (
    DEFAULT_LEVELS,
    build_model,
    expected_output,
    publish_dir,
    publish_redis,
    real_bars,
)
from redis.asyncio import Redis
from support.waits import wait_until

from streamer.io.model import (
    DirectoryRegistry,
    ModelFile,
    ModelServer,
    RedisRegistry,
    RegistryWatcher,
)

WINDOWS = window_array([real_bars("BTCUSDT"), real_bars("ETHUSDT")], 60)
BANDS = {"v1": 0.001, "v2": 0.002, "v8": 0.003}


def real_windows(window: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    return window_array([real_bars("BTCUSDT"), real_bars("ETHUSDT")], window)


def good(version: str) -> bytes:
    return build_model(version=version, band=BANDS[version])


def not_onnx() -> bytes:
    data = bytearray(good("v1"))
    data[10:60] = b"\xfe" * 50
    return bytes(data)


@contextlib.asynccontextmanager
async def running(watcher: RegistryWatcher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(watcher.run(), name="model-watcher")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def assert_serving(server: ModelServer, version: str) -> None:
    """The server answers, with the model of ``version`` (known by its band)."""
    assert server.current is not None and server.current.version == version
    out = await server.predict(WINDOWS)
    np.testing.assert_allclose(
        out, expected_output(WINDOWS, 15, DEFAULT_LEVELS, BANDS[version]), rtol=1e-7
    )


async def test_directory_registry_swaps_good_versions_and_refuses_bad_ones(
    tmp_path: Path,
) -> None:
    root = tmp_path / "registry"
    server = ModelServer()
    watcher = RegistryWatcher(DirectoryRegistry(root), server, smoke_windows=real_windows)
    assert not await watcher.check_once()  # no registry yet: starts without a model
    assert server.current is None and not server.ready

    publish_dir(root, "v1", good("v1"))
    assert await watcher.check_once()
    await assert_serving(server, "v1")
    assert not await watcher.check_once()  # unchanged: nothing to do

    publish_dir(root, "v2", good("v2"))
    assert await watcher.check_once()
    await assert_serving(server, "v2")

    full = good("v1")
    publish_dir(root, "v3", full, model_bytes=full[: len(full) // 2])  # crash mid-write
    publish_dir(root, "v4", not_onnx())  # sha256 of the garbage itself
    publish_dir(root, "v5", build_model(version="v5", input_name="x"))
    publish_dir(root, "v6", build_model(version="v6", output="crossing"))
    expected: dict[str, int] = {}
    refusals = (("v3", "sha256"), ("v4", "corrupt"), ("v5", "contract"), ("v6", "smoke"))
    for version, reason in refusals:
        (root / "current").write_text(f'{{"version": "{version}"}}')
        assert not await watcher.check_once()
        expected[reason] = 1
        assert dict(watcher.reload_failures_total) == expected
        assert version in (watcher.last_failure or "") and reason in (watcher.last_failure or "")
        await assert_serving(server, "v2")

    (root / "current").write_text('{"version": "v7"}')  # points at nothing
    assert not await watcher.check_once()
    assert watcher.reload_failures_total["missing"] == 1
    assert not await watcher.check_once()  # a refused version is not tried again at once
    assert watcher.reload_failures_total["missing"] == 1
    await assert_serving(server, "v2")

    publish_dir(root, "v8", good("v8"))
    assert await watcher.check_once()
    await assert_serving(server, "v8")
    (root / "current").write_text('{"version": "v2"}')  # rollback to a known-good version
    assert await watcher.check_once()
    await assert_serving(server, "v2")
    assert watcher.reload_successes_total == 4
    server.close()


async def test_refused_version_is_retried_after_the_backoff(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    server = ModelServer()
    watcher = RegistryWatcher(DirectoryRegistry(root), server, retry_failed_s=0.0)
    publish_dir(root, "v5", build_model(version="v5", input_name="x"))
    assert not await watcher.check_once()
    assert not await watcher.check_once()
    assert watcher.reload_failures_total["contract"] == 2
    server.close()


async def test_unreadable_current_is_a_registry_error_not_a_crash(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    root.mkdir()
    server = ModelServer()
    watcher = RegistryWatcher(DirectoryRegistry(root), server)
    for text in ("{not json", '{"version": 3}', '{"version": "../../etc"}'):
        (root / "current").write_text(text)
        assert not await watcher.check_once()
    assert watcher.registry_errors_total == 3
    assert sum(watcher.reload_failures_total.values()) == 0 and server.current is None
    server.close()


async def test_watcher_loop_polls_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    server = ModelServer()
    watcher = RegistryWatcher(
        DirectoryRegistry(root), server, poll_interval_s=0.02, smoke_windows=real_windows
    )
    async with running(watcher) as task:
        publish_dir(root, "v1", good("v1"))
        await wait_until(lambda: server.current is not None, 10, "v1 to load", task=task)
        await assert_serving(server, "v1")
        full = good("v2")
        publish_dir(root, "v2", full, model_bytes=full[:-100])
        await wait_until(
            lambda: watcher.reload_failures_total["sha256"] == 1, 10, "refusal", task=task
        )
        await assert_serving(server, "v1")
        publish_dir(root, "v8", good("v8"))
        await wait_until(lambda: watcher.serving_token == "v8", 10, "v8 to load", task=task)
        await assert_serving(server, "v8")
    server.close()


async def test_single_model_file_reloads_on_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    server = ModelServer()
    watcher = RegistryWatcher(ModelFile(path), server, smoke_windows=real_windows)
    assert not await watcher.check_once()  # no file yet
    full = good("v1")
    path.write_bytes(full[: len(full) // 3])  # caught mid-write
    assert not await watcher.check_once()
    assert watcher.reload_failures_total["corrupt"] == 1 and server.current is None
    path.write_bytes(full)  # the write completes: size and mtime change
    assert await watcher.check_once()
    await assert_serving(server, "v1")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))  # touched, same bytes
    assert not await watcher.check_once()
    assert server.swaps_total == 1
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(good("v2"))
    os.replace(tmp, path)
    assert await watcher.check_once()
    await assert_serving(server, "v2")
    server.close()


# --- Redis backend ---------------------------------------------------------------------------


@pytest.fixture
async def redis_registry(redis_server: Any) -> AsyncIterator[tuple[RedisRegistry, Redis]]:
    registry = RedisRegistry.from_url(redis_server.url)
    writer = Redis.from_url(redis_server.url)
    yield registry, writer
    await writer.aclose()
    await registry.aclose()


@pytest.mark.integration
async def test_redis_registry_reloads_on_events_and_refuses_bad_versions(
    redis_registry: tuple[RedisRegistry, Redis],
) -> None:
    registry, writer = redis_registry
    server = ModelServer()
    # polling every minute: within the test's deadlines only the events channel can wake it
    watcher = RegistryWatcher(registry, server, poll_interval_s=60.0, smoke_windows=real_windows)
    async with running(watcher) as task:
        await wait_until(lambda: registry.subscribed, 10, "subscription", task=task)
        assert server.current is None and not server.ready
        await publish_redis(writer, "v1", good("v1"))
        await wait_until(lambda: server.current is not None, 10, "v1 via event", task=task)
        await assert_serving(server, "v1")

        full = good("v2")
        bad = (
            ("v3", "sha256", {"data": full, "model_bytes": full[: len(full) // 2]}),
            ("v4", "corrupt", {"data": not_onnx()}),
            (
                "v5",
                "contract",
                {"data": build_model(version="v5", metadata={"tickcast.contract": "2"})},
            ),
            ("v6", "smoke", {"data": build_model(version="v6", output="nan")}),
        )
        for version, reason, kwargs in bad:
            data = kwargs.pop("data")
            await publish_redis(writer, version, data, **kwargs)
            await wait_until(
                lambda r=reason: watcher.reload_failures_total[r] == 1,
                10,
                f"{version} refused",
                task=task,
            )
            await assert_serving(server, "v1")

        await publish_redis(writer, "v2", good("v2"))
        await wait_until(lambda: watcher.serving_token == "v2", 10, "v2 via event", task=task)
        await assert_serving(server, "v2")
        assert watcher.reload_successes_total == 2
        assert dict(watcher.reload_failures_total) == {
            "sha256": 1,
            "corrupt": 1,
            "contract": 1,
            "smoke": 1,
        }
    server.close()


@pytest.mark.integration
async def test_redis_registry_polls_when_an_event_is_lost_and_survives_a_restart(
    redis_server: Any, redis_registry: tuple[RedisRegistry, Redis]
) -> None:
    registry, writer = redis_registry
    server = ModelServer()
    watcher = RegistryWatcher(registry, server, poll_interval_s=0.05, smoke_windows=real_windows)
    async with running(watcher) as task:
        await publish_redis(writer, "v1", good("v1"), announce=False)
        await wait_until(lambda: server.current is not None, 10, "v1 via polling", task=task)
        await assert_serving(server, "v1")

        redis_server.stop()
        await wait_until(
            lambda: watcher.registry_errors_total > 0, 10, "registry errors", task=task
        )
        await wait_until(lambda: not registry.subscribed, 10, "subscription lost", task=task)
        await assert_serving(server, "v1")  # Redis down: the model keeps serving
        redis_server.start()  # same port, empty (no persistence)
        await wait_until(lambda: registry.subscribed, 10, "resubscription", task=task)
        await assert_serving(server, "v1")  # an empty registry does not unload the model

        await writer.connection_pool.disconnect()  # the test's own client: drop dead sockets
        await publish_redis(writer, "v2", good("v2"))
        await wait_until(lambda: watcher.serving_token == "v2", 10, "v2 after restart", task=task)
        await assert_serving(server, "v2")
    server.close()


# --- against the trainer's own registry writer -----------------------------------------------


@pytest.mark.integration
async def test_reads_what_the_trainer_registry_writes(tmp_path: Path, redis_server: Any) -> None:
    """The trainer's publish, promote and rollback, read by the streamer (both backends)."""
    from trainer import registry as trainer_registry  # torch-free; the streamer never imports it

    backends = (
        (trainer_registry.DirectoryRegistry(tmp_path / "r"), DirectoryRegistry(tmp_path / "r")),
        (
            trainer_registry.RedisRegistry(redis_server.url),
            RedisRegistry.from_url(redis_server.url),
        ),
    )
    for writer, reader in backends:
        server = ModelServer()
        watcher = RegistryWatcher(reader, server, smoke_windows=real_windows)
        assert not await watcher.check_once()
        versions = ("20250520T000000Z-00000001", "20250520T010000Z-00000002")
        for version in versions:
            data = build_model(version=version)
            manifest = trainer_registry.build_manifest(version, data, {}, {}, {}, "test", None)
            writer.publish(data, manifest, promote=True)
            assert await watcher.check_once()
            assert server.current is not None and server.current.version == version
        writer.rollback()
        assert await watcher.check_once()
        assert server.current is not None and server.current.version == versions[0]
        assert sum(watcher.reload_failures_total.values()) == 0
        if isinstance(reader, RedisRegistry):
            await reader.aclose()
        server.close()
