"""MqttPublisher against real Mosquitto processes: retained QoS 1 delivery, the status topic and
its last will, the bounded queue, broker restarts, TCP_NODELAY on the live socket, and TLS with
client certificates generated here.

Each test subscribes with its own aiomqtt client and waits on conditions with deadlines.
Forecast payloads carry last closes of real Kraken BTC/USDT bars (tests/fixtures/kraken).
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest
from support.servers import ServerProcess, free_port, wait_for_port
from support.waits import wait_until

from streamer.core.contracts.mqtt import (
    decode_forecast_payload,
    forecast_topic,
    validate_forecast_payload,
)
from streamer.core.types import MINUTE_MS, Forecast
from streamer.io.publisher import MqttOptions, MqttPublisher

REPO = Path(__file__).resolve().parents[2]
BARS_CSV = REPO / "tests" / "fixtures" / "kraken" / "XBTUSDT_1m_20251110_1723-20251111_0016.csv"
PREFIX = "tc"
Received = list[tuple[str, bytes, bool]]  # topic, payload, retain flag


def real_forecasts(n: int, symbol: str = "BTC-USDT") -> list[Forecast]:
    """Forecasts after ``n`` consecutive real bars: persistence with a 0.1 % band."""
    with BARS_CSV.open() as f:
        rows = list(csv.DictReader(f))[:n]
    out = []
    for row in rows:
        t, close = int(row["open_time_ms"]), float(row["close"])
        values = tuple((close * 0.999, close, close * 1.001) for _ in range(3))
        out.append(
            Forecast("kraken", symbol, t, close, (0.1, 0.5, 0.9), values, "v1", "",
                     issued_at_ms=t + MINUTE_MS + 7)
        )  # fmt: skip
    return out


def options(url: str, **kw: object) -> MqttOptions:
    fast = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.2, "timeout_s": 3.0}
    return MqttOptions(url=url, prefix=PREFIX, instance="test", **{**fast, **kw})  # type: ignore[arg-type]


class Inbox:
    """Messages one subscriber received, in order, and a way to wait for a condition on them."""

    def __init__(self) -> None:
        self.messages: Received = []
        self.changed = asyncio.Event()

    def on(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _ in self.messages if t == topic]

    async def wait_for(self, condition: Callable[[Received], bool], timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition(self.messages):
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def subscribed(
    port: int, topic: str = f"{PREFIX}/#", **client_kw: object
) -> AsyncIterator[Inbox]:
    inbox = Inbox()

    async def collect(client: aiomqtt.Client) -> None:
        async for m in client.messages:
            assert isinstance(m.payload, bytes)
            inbox.messages.append((str(m.topic), m.payload, m.retain))
            inbox.changed.set()

    async with aiomqtt.Client("127.0.0.1", port, **client_kw) as client:  # type: ignore[arg-type]
        await client.subscribe(topic, qos=1)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(collect(client), name="test-subscriber")
            try:
                yield inbox
            finally:
                task.cancel()


@asynccontextmanager
async def running(pub: MqttPublisher, close_timeout_s: float = 3.0) -> AsyncIterator[MqttPublisher]:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(pub.run(), name="publisher")
        try:
            yield pub
        finally:
            await pub.close(close_timeout_s)


pytestmark = pytest.mark.integration


async def test_retained_forecast_reaches_a_late_subscriber_and_status_goes_offline_on_close(
    mosquitto_server: ServerProcess,
) -> None:
    pub = MqttPublisher(options(mosquitto_server.url))
    f = real_forecasts(1)[0]
    topic = forecast_topic(PREFIX, "kraken", "BTC-USDT")
    async with running(pub):
        pub.publish_forecast(f)
        await wait_until(lambda: pub.published_total == 1, 5, "pub.published_total == 1")
        assert pub.connected
        async with subscribed(mosquitto_server.port) as late:
            await late.wait_for(lambda m: len(m) == 2)
            got = {t: (payload, retain) for t, payload, retain in late.messages}
            assert got["tc/status/test"] == (b"online", True)
            payload, retain = got[topic]
            assert retain
            obj = decode_forecast_payload(payload)
            assert validate_forecast_payload(obj) == []
            assert obj["last_close"] == f.last_close
            assert obj["bar_time"] == "2025-11-10T17:23:00Z"
    # closed cleanly: the retained status now reads offline
    assert not pub.connected
    assert pub.errors_total == 0 and pub.dropped_total == 0
    async with subscribed(mosquitto_server.port, "tc/status/test") as after:
        await after.wait_for(lambda m: m == [("tc/status/test", b"offline", True)])


async def test_close_drains_the_queue_before_saying_offline(
    mosquitto_server: ServerProcess,
) -> None:
    latencies: list[tuple[str, float]] = []
    pub = MqttPublisher(options(mosquitto_server.url), lambda t, s: latencies.append((t, s)))
    payloads = [(f"{PREFIX}/forecast/kraken/S{i % 20}", f"p{i}".encode()) for i in range(400)]
    async with subscribed(mosquitto_server.port) as inbox:
        async with running(pub):
            await wait_until(lambda: pub.connected, 5, "pub.connected")
            for topic, payload in payloads:
                pub.publish(topic, payload)
        # close() returned: everything was ACKed, then offline was the last word
        assert pub.published_total == 400 and pub.dropped_total == 0 and balanced(pub, 400)
        await inbox.wait_for(lambda m: len(m) == 402)  # online + 400 + offline
    assert inbox.messages[0][:2] == ("tc/status/test", b"online")
    assert [(t, p) for t, p, _ in inbox.messages[1:-1]] == payloads  # in order, none lost
    assert inbox.messages[-1][:2] == ("tc/status/test", b"offline")
    assert [t for t, _ in latencies] == [t for t, _ in payloads]
    assert all(0.0 <= s < 3.0 for _, s in latencies)


async def test_wait_sent_returns_once_everything_is_acked_and_at_once_without_a_broker(
    mosquitto_server: ServerProcess,
) -> None:
    """What the forecaster waits on before scoring: the window of 50 in flight still delivers
    all 300 in order, and wait_sent returns when the last ACK is in, not at its timeout."""
    pub = MqttPublisher(options(mosquitto_server.url, inflight_max=50))
    payloads = [(f"{PREFIX}/forecast/kraken/S{i}", f"p{i}".encode()) for i in range(300)]
    async with subscribed(mosquitto_server.port) as inbox, running(pub):
        await wait_until(lambda: pub.connected, 5, "pub.connected")
        for topic, payload in payloads:
            pub.publish(topic, payload)
        started = time.monotonic()
        await pub.wait_sent(timeout_s=30.0)
        assert time.monotonic() - started < 10.0  # not the timeout
        assert pub.published_total == 300 and pub.queued == 0
        await inbox.wait_for(lambda m: len(m) == 301)
        assert [(t, p) for t, p, _ in inbox.messages[1:]] == payloads
    # no broker at all: queued payloads cannot be sent, and wait_sent does not wait for them
    away = MqttPublisher(options(f"mqtt://127.0.0.1:{free_port()}"))
    async with running(away, close_timeout_s=0.5):
        away.publish(f"{PREFIX}/forecast/kraken/X", b"x")
        started = time.monotonic()
        await away.wait_sent(timeout_s=30.0)
        assert time.monotonic() - started < 1.0 and away.queued == 1


def balanced(pub: MqttPublisher, accepted: int) -> bool:
    """Every accepted payload is accounted for: ACKed, dropped (counted) or still queued."""
    return accepted + pub.republished_total == pub.published_total + pub.dropped_total + pub.queued


async def test_close_with_the_broker_away_keeps_its_deadline_and_counts_what_is_left() -> None:
    pub = MqttPublisher(options(f"mqtt://127.0.0.1:{free_port()}"))
    for i in range(3):
        pub.publish(f"{PREFIX}/t{i}", b"x")
    async with asyncio.TaskGroup() as tg:
        tg.create_task(pub.run(), name="publisher")
        await wait_until(lambda: pub.errors_total >= 1, 5, "pub.errors_total >= 1")
        started = time.monotonic()
        await pub.close(0.5)
        assert time.monotonic() - started < 0.5
    assert (pub.queued, pub.dropped_total, pub.published_total) == (0, 3, 0)
    assert balanced(pub, 3)


async def test_close_gives_up_on_what_a_silent_broker_never_acks_at_its_deadline(
    mosquitto_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that keeps the connection open but stops answering (stopped, not gone): the
    drain gives up at close's deadline and counts what is in flight as dropped, instead of
    waiting for close's grace to run out and cancel the publisher."""
    pub = MqttPublisher(options(mosquitto_server.url, timeout_s=1.0))
    broker = mosquitto_server.proc
    assert broker is not None
    grace = 0.5 + 3 * 1.0  # close(0.5): its deadline plus three of the options' timeouts
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(pub.run(), name="publisher")
        await wait_until(lambda: pub.connected, 5, "pub.connected")
        broker.send_signal(signal.SIGSTOP)
        try:
            for i in range(10):
                pub.publish(f"{PREFIX}/silent/{i}", b"x")
            await wait_until(lambda: pub.queued == 0, 5, "pub.queued == 0")  # all sent, none ACKed
            started = time.monotonic()
            await pub.close(0.5)
            elapsed = time.monotonic() - started
        finally:
            broker.send_signal(signal.SIGCONT)
    assert "close deadline passed" in caplog.text
    assert "did not stop within" not in caplog.text and not task.cancelled()
    assert 0.5 <= elapsed < grace
    assert (pub.published_total, pub.dropped_total, pub.queued) == (0, 10, 0)
    assert balanced(pub, 10)


async def test_cancelled_publisher_still_says_offline(mosquitto_server: ServerProcess) -> None:
    pub = MqttPublisher(options(mosquitto_server.url))
    async with subscribed(mosquitto_server.port, "tc/status/test") as inbox:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(pub.run(), name="publisher")
            await inbox.wait_for(lambda m: [p for _, p, _ in m] == [b"online"])
            task.cancel()  # the app's TaskGroup failing elsewhere, or a second signal
        await inbox.wait_for(lambda m: [p for _, p, _ in m] == [b"online", b"offline"])
    assert not pub.connected


def test_full_queue_drops_the_oldest_of_the_same_topic_else_the_oldest() -> None:
    pub = MqttPublisher(options("mqtt://127.0.0.1:1", queue_max=3))
    for topic, payload in [("b", b"b1"), ("a", b"a1"), ("a", b"a2")]:
        pub.publish(f"{PREFIX}/{topic}", payload)
    assert (pub.queued, pub.dropped_total) == (3, 0)
    pub.publish("tc/a", b"a3")  # drops a1, not the older b1: queue b1 a2 a3
    assert (pub.queued, pub.dropped_total) == (3, 1)
    pub.publish("tc/c", b"c1")  # no c queued: drops the oldest, b1: queue a2 a3 c1
    assert (pub.queued, pub.dropped_total) == (3, 2)
    assert balanced(pub, 5)
    pub.publish("tc/a+", b"x")  # wildcards are not topics: refused and counted, queue untouched
    assert (pub.queued, pub.dropped_total, pub.errors_total) == (3, 2, 1)
    assert pub.published_total == 0 and not pub.connected


@pytest.mark.parametrize(
    ("sequence", "delivered", "republished"),
    [
        # the same topic's oldest goes first, even when another topic's payload is older
        ("b1 a1 a2 a3", ["b1", "a2", "a3"], 0),
        # c has nothing queued, so the oldest overall (b1) went; being b's newest, it comes
        # back at the head of the queue when the connection opens
        ("b1 a1 a2 a3 c1", ["b1", "a2", "a3", "c1"], 1),
    ],
)
async def test_queued_survivors_are_delivered_in_order_once_connected(
    mosquitto_server: ServerProcess, sequence: str, delivered: list[str], republished: int
) -> None:
    pub = MqttPublisher(options(mosquitto_server.url, queue_max=3))
    for payload in sequence.split():
        pub.publish(f"{PREFIX}/{payload[0]}", payload.encode())
    async with subscribed(mosquitto_server.port, f"{PREFIX}/+") as inbox:
        async with running(pub):
            await inbox.wait_for(lambda m: len(m) == len(delivered))
            await wait_until(
                lambda: pub.published_total == len(delivered),
                5,
                "pub.published_total == len(delivered)",
            )
        assert [p.decode() for _, p, _ in inbox.messages] == delivered
    assert pub.republished_total == republished
    assert pub.dropped_total == len(sequence.split()) - 3
    assert balanced(pub, len(sequence.split()))


async def test_broker_restart_resumes_and_republishes_the_newest_per_topic(
    mosquitto_server: ServerProcess,
) -> None:
    fa = real_forecasts(3, "BTC-USDT")
    fb = real_forecasts(1, "ETH-USDT")
    topic_a = forecast_topic(PREFIX, "kraken", "BTC-USDT")
    topic_b = forecast_topic(PREFIX, "kraken", "ETH-USDT")
    pub = MqttPublisher(options(mosquitto_server.url))
    async with running(pub):
        pub.publish_forecast(fa[0])
        pub.publish_forecast(fb[0])
        await wait_until(lambda: pub.published_total == 2, 5, "pub.published_total == 2")

        mosquitto_server.stop()  # no persistence: its retained messages die with it
        await wait_until(lambda: not pub.connected, 5, "not pub.connected")
        pub.publish_forecast(fa[1])  # queued while the broker is away
        pub.publish_forecast(fa[2])
        mosquitto_server.start()
        await wait_until(
            lambda: pub.connected and pub.published_total == 5,
            10,
            "pub.connected and pub.published_total == 5",
        )

        assert pub.connections_total == 2 and pub.errors_total >= 1
        assert pub.republished_total == 1  # ETH had nothing newer queued; BTC's newest was queued
        async with subscribed(mosquitto_server.port) as late:
            await late.wait_for(lambda m: len(m) == 3)
            got = {t: p for t, p, retain in late.messages if retain}
        assert got["tc/status/test"] == b"online"
        assert decode_forecast_payload(got[topic_a])["bar_time"] == "2025-11-10T17:25:00Z"
        assert decode_forecast_payload(got[topic_b])["symbol"] == "ETH-USDT"

        # a broker restart while idle (nothing queued): noticed, reconnected, republished
        mosquitto_server.restart()
        await wait_until(
            lambda: pub.connections_total == 3 and pub.connected,
            10,
            "pub.connections_total == 3 and pub.connected",
        )
        await wait_until(lambda: pub.published_total == 7, 5, "pub.published_total == 7")
        async with subscribed(mosquitto_server.port) as late:
            await late.wait_for(lambda m: len(m) == 3)
            got = {t: p for t, p, retain in late.messages if retain}
            assert decode_forecast_payload(got[topic_a])["bar_time"] == "2025-11-10T17:25:00Z"
            assert got["tc/status/test"] == b"online"
            pub.publish(f"{PREFIX}/after", b"live")  # and live publishing goes on
            await late.wait_for(lambda m: (f"{PREFIX}/after", b"live", False) in m)
            await wait_until(
                lambda: balanced(pub, 5) and pub.queued == 0,
                5,
                "balanced(pub, 5) and pub.queued == 0",
            )


CRASH_SCRIPT = """
import asyncio, sys
from streamer.io.publisher import MqttOptions, MqttPublisher
asyncio.run(MqttPublisher(MqttOptions(url=sys.argv[1], instance="crash")).run())
"""


async def test_last_will_says_offline_when_the_process_dies(
    mosquitto_server: ServerProcess,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASH_SCRIPT, mosquitto_server.url, cwd=REPO
    )
    try:
        async with subscribed(mosquitto_server.port, "tickcast/status/crash") as inbox:
            await inbox.wait_for(lambda m: [p for _, p, _ in m] == [b"online"], timeout_s=10)
            proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker sees the socket drop
            await inbox.wait_for(lambda m: [p for _, p, _ in m] == [b"online", b"offline"])
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def tcp_nodelay_of_connections_to(port: int) -> list[int]:
    """TCP_NODELAY of each socket of this process connected to 127.0.0.1:``port``."""
    values = []
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            continue
        with sock:
            try:
                if sock.type == socket.SOCK_STREAM and sock.getpeername() == ("127.0.0.1", port):
                    values.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            except OSError:
                continue
    return values


async def test_tcp_nodelay_is_set_on_the_live_socket(mosquitto_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", mosquitto_server.port)):
        assert tcp_nodelay_of_connections_to(mosquitto_server.port) == [0]  # Nagle by default
    pub = MqttPublisher(options(mosquitto_server.url))
    async with running(pub):
        await wait_until(lambda: pub.connected, 5, "pub.connected")
        assert tcp_nodelay_of_connections_to(mosquitto_server.port) == [1]


async def test_password_never_reaches_logs_or_repr(
    mosquitto_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-Pa55"
    dead = f"mqtt://tick:{secret}@127.0.0.1:{free_port()}"
    pub = MqttPublisher(options(dead))
    assert pub.options.credentials == ("tick", secret)
    async with running(pub):
        await wait_until(
            lambda: pub.errors_total >= 2, 5, "pub.errors_total >= 2"
        )  # connection refused, retried
    live = MqttPublisher(options(mosquitto_server.url, username="tick", password=secret))
    async with running(live):
        await wait_until(lambda: live.connected, 5, "live.connected")
    assert "tick:***@" in caplog.text
    assert secret not in caplog.text
    assert secret not in repr(pub.options) and secret not in repr(live.options)
    with pytest.raises(ValueError, match=r"\*\*\*") as refused:
        MqttOptions(url=f"http://tick:{secret}@host")
    assert secret not in str(refused.value)


# --- TLS with a CA, a server certificate for 127.0.0.1 and a client certificate -----------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d: Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=tickcast test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=tickcast-{name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(
            f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{ext}\n"
            "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
        )
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
                "-extfile", f"{name}.ext", cwd=d)  # fmt: skip


@pytest.fixture
def tls_mosquitto(tmp_path: Path) -> ServerProcess:
    make_certificates(tmp_path)
    port = free_port()
    conf = tmp_path / "mosquitto-tls.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        # run as root, mosquitto would switch to its own user before reading the certificates
        # in this root-only temporary directory; as any other user the line has no effect
        "user root\n"
        f"cafile {tmp_path / 'ca.crt'}\ncertfile {tmp_path / 'server.crt'}\n"
        f"keyfile {tmp_path / 'server.key'}\nrequire_certificate true\n"
    )
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return ServerProcess("mosquitto", port, [mosquitto, "-c", str(conf)])


async def test_tls_with_client_certificates(tls_mosquitto: ServerProcess, tmp_path: Path) -> None:
    tls_mosquitto.start()
    try:
        wait_for_port(tls_mosquitto.port)
        url = f"mqtts://127.0.0.1:{tls_mosquitto.port}"
        ca, cert, key = (str(tmp_path / n) for n in ("ca.crt", "client.crt", "client.key"))

        # Without a client certificate the broker refuses it. Under TLS 1.3 the refusal comes
        # after the client's handshake is done, and aiomqtt only gives up on the CONNACK wait.
        refused = MqttPublisher(options(url, tls_ca_file=ca, timeout_s=0.5))
        async with running(refused):
            await wait_until(lambda: refused.errors_total >= 1, 5, "refused.errors_total >= 1")
            assert not refused.connected and refused.connections_total == 0

        pub = MqttPublisher(options(url, tls_ca_file=ca, tls_cert_file=cert, tls_key_file=key))
        sub_tls = aiomqtt.TLSParameters(ca_certs=ca, certfile=cert, keyfile=key)
        async with running(pub):
            pub.publish_forecast(real_forecasts(1)[0])
            await wait_until(lambda: pub.published_total == 1, 5, "pub.published_total == 1")
            assert pub.connected
            assert tcp_nodelay_of_connections_to(tls_mosquitto.port) == [1]
            async with subscribed(tls_mosquitto.port, tls_params=sub_tls) as late:
                await late.wait_for(lambda m: len(m) == 2)
                forecast = [p for t, p, _ in late.messages if "/forecast/" in t]
                assert validate_forecast_payload(decode_forecast_payload(forecast[0])) == []
    finally:
        tls_mosquitto.stop()
