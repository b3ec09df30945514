"""Credentials never appear in logs (plain records and JSON lines), /metrics, error messages or
``check-config`` output.

Redis runs with ``requirepass`` and Mosquitto with a password file (made with
``mosquitto_passwd``) and no anonymous access, both started here, so every credential is really
used: the daemon only gets bars into Redis and forecasts to a subscriber if it authenticated.
Then both servers are stopped under it, so that the error paths (outage warnings, failed
reconnects, with the URLs they name) write their lines too. Logging runs at DEBUG, so the
libraries' own debug lines are searched as well.

Covered: the Redis password in the URL and in ``TICKCAST_REDIS_PASSWORD_FILE``; the MQTT password
as a setting and in ``TICKCAST_MQTT_PASSWORD_FILE``. (The publisher and the store alone:
tests/integration/test_publisher.py and test_store_redis.py.) The streamer reads public market
data only, so it holds no exchange API keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from fixtures.models import build_model
from support.cli import run_cli
from support.mqtt import Subscriber, subscribed
from support.servers import ServerProcess, mosquitto_process, redis_process, serve
from support.streamer import (
    REPLAY_SPEED,
    daemon,
    daemon_env,
    expected_bars,
    kline_source,
    running,
    seed_bars,
    settings_for,
    stored_bars,
)
from support.waits import wait_until

from streamer.app import SHUTDOWN_TIMEOUT_S, Streamer
from streamer.core.types import MINUTE_MS
from streamer.logs import JsonFormatter
from streamer.replay.data import Source
from streamer.replay.server import ReplayServer

pytestmark = pytest.mark.integration

REDIS_SECRET = "r3d1s-Pa55-q8Zx"
MQTT_USER, MQTT_SECRET = "tickcast", "mq77-Pa55-w4Yv"
SECRETS = (REDIS_SECRET, MQTT_SECRET)
SYMBOL = "BTCUSDT"


@pytest.fixture
def secure_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    yield from serve(request, redis_process(tmp_path, "--requirepass", REDIS_SECRET))


@pytest.fixture
def secure_mosquitto(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    passwd = tmp_path / "mosquitto.passwd"
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([tool, "-b", "-c", str(passwd), MQTT_USER, MQTT_SECRET], check=True)
    passwd.chmod(0o600)
    settings = (
        f"allow_anonymous false\npassword_file {passwd}\n"
        # as root, mosquitto would drop to its own user before reading the root-only file
        "persistence false\nset_tcp_nodelay true\nuser root\n"
    )
    yield from serve(request, mosquitto_process(tmp_path, settings))


def forecasts_seen(port: int) -> contextlib.AbstractAsyncContextManager[Subscriber]:
    """A subscriber to the forecasts that logs in with the real credentials."""
    return subscribed(port, ["tickcast/forecast/#"], username=MQTT_USER, password=MQTT_SECRET)


async def redis_bar_count(server: ServerProcess) -> int:
    client = aioredis.from_url(f"redis://:{REDIS_SECRET}@127.0.0.1:{server.port}/0")
    try:
        bars, _ = await stored_bars(client, "binance", SYMBOL)
        return len(bars)
    finally:
        await client.aclose()


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} appears in {where}"


async def test_credentials_never_reach_logs_metrics_or_errors(
    secure_redis: ServerProcess,
    secure_mosquitto: ServerProcess,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    json_lines = io.StringIO()
    json_handler = logging.StreamHandler(json_lines)
    json_handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(json_handler)
    model = tmp_path / "model.onnx"
    model.write_bytes(build_model(version="v1", window=10, horizon=3))
    source = kline_source(SYMBOL, 60)
    start = source.first_open_ms + 20 * MINUTE_MS
    try:
        async with (
            forecasts_seen(secure_mosquitto.port) as sub,
            ReplayServer([source], speed=REPLAY_SPEED, start_ms=start) as server,
        ):
            settings = settings_for(
                server,
                [SYMBOL],
                redis_url=f"redis://:{REDIS_SECRET}@127.0.0.1:{secure_redis.port}/0",
                mqtt_url=f"mqtt://127.0.0.1:{secure_mosquitto.port}",
                mqtt_username=MQTT_USER,
                mqtt_password=MQTT_SECRET,
                model_registry=str(model),
            )
            streamer = Streamer(settings, clock=server.clock_ms)
            async with running(streamer):
                # both credentials work: forecasts reach the subscriber, bars reach Redis
                await wait_until(lambda: len(sub.messages) >= 3, 20, "authenticated forecasts")
                assert await redis_bar_count(secure_redis) >= 20
                # the error paths: both servers go away under the daemon
                secure_redis.stop()
                secure_mosquitto.stop()
                publisher = streamer.publisher
                assert publisher is not None
                await wait_until(
                    lambda: streamer.writer.write_errors_total >= 2 and publisher.errors_total >= 2,
                    20,
                    "failed writes and reconnects",
                )
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{streamer.ops.port}/metrics") as response,
                ):
                    assert response.status == 200
                    metrics = await response.text()
                secure_redis.start()  # back, so that the ordered stop can drain
                secure_mosquitto.start()
                await wait_until(lambda: streamer.writer.buffered == 0, 20, "the drain")
    finally:
        root.removeHandler(json_handler)

    logged = caplog.text + "\n".join(
        str(r.exc_text or "") + str(r.args) + str(r.__dict__) for r in caplog.records
    )
    # the error paths ran and named the servers, with the credentials redacted
    assert f"redis://:***@127.0.0.1:{secure_redis.port}" in caplog.text
    assert "bar store unavailable" in caplog.text and "mqtt" in caplog.text
    assert_no_secret(logged, "the log records")
    assert_no_secret(json_lines.getvalue(), "the JSON log lines")
    assert all(json.loads(line) for line in json_lines.getvalue().splitlines())
    assert_no_secret(metrics, "/metrics")
    assert publisher is not None
    assert_no_secret(repr(publisher.options), "repr(MqttOptions)")


def secrets_env(
    server: ReplayServer,
    redis: ServerProcess,
    mqtt: ServerProcess,
    tmp_path: Path,
    redis_password_from_file: bool,
) -> dict[str, str]:
    """A daemon reading the MQTT password (and the Redis one, or it is in the URL) from files,
    logging JSON at DEBUG."""
    redis_file, mqtt_file = tmp_path / "redis.secret", tmp_path / "mqtt.secret"
    redis_file.write_text(REDIS_SECRET + "\n")
    mqtt_file.write_text(MQTT_SECRET + "\n")
    for f in (redis_file, mqtt_file):
        f.chmod(0o600)
    model = tmp_path / "model.onnx"
    model.write_bytes(build_model(version="v1", window=10, horizon=3))
    redis_settings = (
        {"redis_url": f"redis://127.0.0.1:{redis.port}/0", "redis_password_file": str(redis_file)}
        if redis_password_from_file
        else {"redis_url": f"redis://:{REDIS_SECRET}@127.0.0.1:{redis.port}/0"}
    )
    return daemon_env(
        server,
        [SYMBOL],
        mqtt_url=f"mqtt://127.0.0.1:{mqtt.port}",
        mqtt_username=MQTT_USER,
        mqtt_password_file=str(mqtt_file),
        model_registry=str(model),
        log_json="true",
        log_level="DEBUG",
        **redis_settings,
    )


async def seed(redis: ServerProcess, source: Source, minutes: int) -> None:
    """Real bars as a previous run left them, so windows are full and forecasts come at once."""
    url = f"redis://127.0.0.1:{redis.port}/0"
    await seed_bars(url, expected_bars(source)[:minutes], password=REDIS_SECRET)


async def test_password_files_and_json_logs_of_a_real_process(
    secure_redis: ServerProcess, secure_mosquitto: ServerProcess, tmp_path: Path
) -> None:
    source = kline_source(SYMBOL, 40)
    await seed(secure_redis, source, 20)
    start = source.first_open_ms + 20 * MINUTE_MS
    log = tmp_path / "daemon.log"
    async with (
        forecasts_seen(secure_mosquitto.port) as sub,
        ReplayServer([source], speed=60.0, start_ms=start) as server,
    ):
        env = secrets_env(server, secure_redis, secure_mosquitto, tmp_path, False)
        async with daemon(env, log) as proc:
            # forecasts reach the subscriber: the daemon logged in with the file's password
            await wait_until(
                lambda: len(sub.messages) >= 2 or proc.returncode is not None, 30, "forecasts"
            )
            assert proc.returncode is None, log.read_text()[-2000:]
            secure_mosquitto.stop()  # the error paths write their lines too
            await asyncio.sleep(1.0)  # the fault's length: reconnect attempts fail meanwhile
            secure_mosquitto.start()
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S + 5):
                assert await proc.wait() == 0
    text = log.read_text(errors="replace")
    lines = text.splitlines()
    for line in lines:  # every line is one JSON event
        assert isinstance(json.loads(line), dict), line
    assert any("mqtt connected" in line for line in lines)
    assert any('"level": "warning"' in line and "mqtt" in line for line in lines)
    assert_no_secret(text, "the daemon's JSON log")


async def test_the_redis_password_file_logs_the_daemon_in(
    secure_redis: ServerProcess, secure_mosquitto: ServerProcess, tmp_path: Path
) -> None:
    source = kline_source(SYMBOL, 40)
    start = source.first_open_ms + 20 * MINUTE_MS
    log = tmp_path / "daemon.log"
    async with ReplayServer([source], speed=60.0, start_ms=start) as server:
        env = secrets_env(server, secure_redis, secure_mosquitto, tmp_path, True)
        async with daemon(env, log) as proc:
            # the watermark clock closes a minute per second of replay: bars should land

            async def two_bars_or_exit() -> bool:
                return proc.returncode is not None or await redis_bar_count(secure_redis) >= 2

            await wait_until(
                two_bars_or_exit, 5, "bars in Redis: the daemon logging in with the password file"
            )
            assert proc.returncode is None, log.read_text()[-2000:]
    assert_no_secret(log.read_text(errors="replace"), "the daemon's JSON log")


def test_check_config_shows_no_credentials(tmp_path: Path) -> None:
    mqtt_file = tmp_path / "mqtt.secret"
    mqtt_file.write_text(MQTT_SECRET)
    env = {
        "TICKCAST_REDIS_URL": f"redis://user:{REDIS_SECRET}@127.0.0.1:6379/0",
        "TICKCAST_MQTT_URL": "mqtt://127.0.0.1:1883",
        "TICKCAST_MQTT_PASSWORD": MQTT_SECRET,
        "TICKCAST_MQTT_PASSWORD_FILE": str(mqtt_file),
    }
    done = run_cli("check-config", env=env)
    assert done.returncode == 0, done.stderr
    assert "redis://user:***@127.0.0.1:6379/0" in done.stdout
    assert_no_secret(done.stdout + done.stderr, "check-config output")


def test_the_settings_repr_shows_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """A settings object in a log line or a traceback with locals must not leak either URL."""
    from streamer.settings import load_settings

    for key in list(os.environ):
        if key.startswith("TICKCAST_"):
            monkeypatch.delenv(key)
    settings = load_settings(
        redis_url=f"redis://:{REDIS_SECRET}@127.0.0.1:6379/0",
        model_registry=f"redis://:{REDIS_SECRET}@127.0.0.1:6379/1",
        mqtt_password=MQTT_SECRET,
    )
    assert_no_secret(repr(settings) + str(settings), "the settings' repr")


def test_check_config_shows_no_registry_credentials() -> None:
    env = {"TICKCAST_MODEL_REGISTRY": f"redis://:{REDIS_SECRET}@127.0.0.1:6379/1"}
    done = run_cli("check-config", env=env)
    assert done.returncode == 0, done.stderr
    assert_no_secret(done.stdout + done.stderr, "check-config output")


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the listening TCP sockets on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


LOOPBACK_V4 = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


async def test_the_metrics_and_replay_servers_bind_to_loopback_unless_told() -> None:
    """The ops endpoint listens where ``metrics_host`` says (default 127.0.0.1), and the replay
    exchange on loopback only unless given a host."""
    from streamer.io.metrics import Metrics, OpsServer
    from streamer.settings import Settings

    assert Settings.model_fields["metrics_host"].default == "127.0.0.1"
    ops = OpsServer(Metrics(), "127.0.0.1", 0, {})
    await ops.start()
    try:
        assert ops.port is not None
        assert listening_addresses(ops.port) == {LOOPBACK_V4}
    finally:
        await ops.stop()
    anywhere = OpsServer(Metrics(), "0.0.0.0", 0, {})  # told otherwise
    await anywhere.start()
    try:
        assert anywhere.port is not None
        assert listening_addresses(anywhere.port) == {"00000000"}
    finally:
        await anywhere.stop()
    async with ReplayServer([kline_source(SYMBOL, 30)]) as server:
        assert server.host == "127.0.0.1"
        assert listening_addresses(server.port) == {LOOPBACK_V4}
