"""TLS to Redis (``rediss://``) and to MQTT (``mqtts://``, CA and client certificates), wired
through the streamer's own settings, against servers that require client certificates.

Certificates are made here with openssl: a test CA, a server certificate for 127.0.0.1 and a
client certificate. redis-server listens on a TLS-only port (``--port 0 --tls-port``,
``--tls-auth-clients yes``) and Mosquitto on a TLS listener with ``require_certificate``.

A streamer configured only through settings (``TICKCAST_REDIS_URL=rediss://...?ssl_ca_certs=...``
for both the bar store and the Redis model registry, ``TICKCAST_MQTT_TLS_CA_FILE``,
``_CERT_FILE``, ``_KEY_FILE``) loads its model from the registry over TLS, writes its bars and
publishes its forecasts over TLS. Verification is on: a store trusting another CA, or a client
without a certificate, is refused. (MqttPublisher with client certificates on its own:
tests/integration/test_publisher.py::test_tls_with_client_certificates.)
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
import redis.asyncio as aioredis
from fixtures.models import build_model, publish_redis
from support.mqtt import subscribed
from support.servers import ServerProcess, free_port, mosquitto_process, require, serve
from support.streamer import (
    REPLAY_SPEED,
    expected_bars,
    kline_source,
    running,
    settings_for,
    stored_bars,
)
from support.waits import wait_until

from streamer.app import Streamer
from streamer.core.types import MINUTE_MS
from streamer.io.store import RedisBarStore
from streamer.replay.server import ReplayServer

pytestmark = pytest.mark.integration

SYMBOL = "BTCUSDT"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
            "-subj", f"/CN=tickcast {name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip


def make_leaf(d: Path, ca: str, name: str, ext: str) -> None:
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=tickcast-{name}", cwd=d)  # fmt: skip
    (d / f"{name}.ext").write_text(f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{ext}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
            "-extfile", f"{name}.ext", cwd=d)  # fmt: skip


@dataclasses.dataclass
class Pki:
    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def redis_url(self, port: int, db: int = 0, ca: str = "ca.crt") -> str:
        query = f"ssl_ca_certs={self.path(ca)}&ssl_certfile={self.path('client.crt')}"
        return f"rediss://127.0.0.1:{port}/{db}?{query}&ssl_keyfile={self.path('client.key')}"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    make_ca(d, "ca")
    make_ca(d, "other-ca")  # trusted by nobody here
    make_leaf(d, "ca", "server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    make_leaf(d, "ca", "client", "extendedKeyUsage=clientAuth")
    return Pki(d)


@pytest.fixture
def tls_redis(request: pytest.FixtureRequest, pki: Pki) -> Iterator[ServerProcess]:
    port = free_port()
    argv = [require("redis-server"), "--port", "0", "--tls-port", str(port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(pki.dir),
            "--tls-cert-file", pki.path("server.crt"), "--tls-key-file", pki.path("server.key"),
            "--tls-ca-cert-file", pki.path("ca.crt"), "--tls-auth-clients", "yes"]  # fmt: skip
    yield from serve(request, ServerProcess("redis", port, argv))


@pytest.fixture
def tls_mosquitto(request: pytest.FixtureRequest, pki: Pki) -> Iterator[ServerProcess]:
    settings = (
        "allow_anonymous true\npersistence false\n"
        "user root\n"  # as root, it would drop privileges before reading the root-only keys
        f"cafile {pki.path('ca.crt')}\ncertfile {pki.path('server.crt')}\n"
        f"keyfile {pki.path('server.key')}\nrequire_certificate true\n"
    )
    yield from serve(request, mosquitto_process(pki.dir, settings))


async def test_bars_models_and_forecasts_over_tls_from_settings(
    pki: Pki, tls_redis: ServerProcess, tls_mosquitto: ServerProcess
) -> None:
    registry_url = pki.redis_url(tls_redis.port, db=1)
    admin = aioredis.from_url(registry_url)
    try:
        await publish_redis(admin, "v1", build_model(version="v1", window=10, horizon=3))
    finally:
        await admin.aclose()
    source = kline_source(SYMBOL, 40)
    start = source.first_open_ms + 20 * MINUTE_MS
    tls = aiomqtt.TLSParameters(
        ca_certs=pki.path("ca.crt"), certfile=pki.path("client.crt"), keyfile=pki.path("client.key")
    )
    async with (
        subscribed(tls_mosquitto.port, ["tickcast/forecast/#"], tls_params=tls) as subscriber,
        ReplayServer([source], speed=REPLAY_SPEED, start_ms=start) as server,
    ):
        settings = settings_for(
            server,
            [SYMBOL],
            redis_url=pki.redis_url(tls_redis.port),
            model_registry=registry_url,
            mqtt_url=f"mqtts://127.0.0.1:{tls_mosquitto.port}",
            mqtt_tls_ca_file=pki.path("ca.crt"),
            mqtt_tls_cert_file=pki.path("client.crt"),
            mqtt_tls_key_file=pki.path("client.key"),
        )
        streamer = Streamer(settings, clock=server.clock_ms)
        async with running(streamer):
            await server.wait_finished()
            await wait_until(lambda: len(subscriber.messages) >= 10, 10, "forecasts over TLS")
            assert streamer.writer.connected and streamer.publisher is not None
            assert streamer.publisher.connected

    forecasts = subscriber.forecasts()
    # the model came from the TLS registry, the forecasts went out over TLS
    assert len(forecasts) >= 10
    assert {f["model"]["version"] for f in forecasts} == {"v1"}
    # and every bar went to Redis over TLS: the first 20 from the start-up backfill
    client = aioredis.from_url(pki.redis_url(tls_redis.port))
    try:
        bars, _ = await stored_bars(client, "binance", SYMBOL)
    finally:
        await client.aclose()
    closed = expected_bars(source)[:35]
    assert [b.open_time_ms for b in bars[:35]] == [b.open_time_ms for b in closed]
    assert bars[:35] == closed


async def test_tls_verification_is_on(pki: Pki, tls_redis: ServerProcess) -> None:
    good = RedisBarStore.from_url(pki.redis_url(tls_redis.port))
    assert await good.ping()
    await good.close()
    # a server certificate from a CA we do not trust is refused
    untrusting = RedisBarStore.from_url(pki.redis_url(tls_redis.port, ca="other-ca.crt"))
    assert not await untrusting.ping()
    await untrusting.close()
    # the server refuses a client without a certificate
    anonymous = RedisBarStore.from_url(
        f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={pki.path('ca.crt')}"
    )
    assert not await anonymous.ping()
    await anonymous.close()
    # and nothing is served in plain text on the TLS port
    plain = RedisBarStore.from_url(f"redis://127.0.0.1:{tls_redis.port}/0", socket_timeout=1.0)
    assert not await plain.ping()
    await plain.close()
