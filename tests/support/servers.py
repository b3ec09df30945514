"""redis-server and Mosquitto processes the tests own, each on a free loopback port.

Each test starts its own server (through the ``tests/conftest.py`` fixtures, or these builders
for a variant: a password, TLS, an append-only file), so the suite passes whether or not a
system instance is running. The servers are Debian packages (the Makefile's deps target).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

MOSQUITTO_DEFAULTS = (
    "allow_anonymous true\npersistence false\nmax_queued_messages 100000\nset_tcp_nodelay true\n"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    """Block until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


def require(binary: str) -> str:
    """The path of a server binary; fails the test (not skips) when it is missing."""
    path = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
    )
    if path is None:
        pytest.fail(f"{binary} is not installed; run `make deps` (Debian package) first")
    return path


@dataclass
class ServerProcess:
    """A server process the tests own; ``restart`` keeps the port for fault tests."""

    name: str
    port: int
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "redis" if self.name == "redis" else "mqtt"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def redis_process(data_dir: Path, *options: str) -> ServerProcess:
    """redis-server without persistence, plus ``options`` (``--requirepass``, ...)."""
    port = free_port()
    argv = [require("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(data_dir), *options]
    return ServerProcess("redis", port, argv)


def durable_redis_process(data_dir: Path) -> ServerProcess:
    """redis-server with an fsync-always append-only file: a SIGKILL loses no acknowledged
    write, as in a production set-up, so after a restart Redis holds what it had acknowledged.
    (Later options win in redis-server's command line.)"""
    port_dir = data_dir / "durable-redis"
    port_dir.mkdir()
    return redis_process(port_dir, "--appendonly", "yes", "--appendfsync", "always")


def mosquitto_process(conf_dir: Path, settings: str = MOSQUITTO_DEFAULTS) -> ServerProcess:
    """Mosquitto listening on a free loopback port with ``settings`` (mosquitto.conf lines)."""
    port = free_port()
    conf = conf_dir / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\n{settings}")
    return ServerProcess("mosquitto", port, [require("mosquitto"), "-c", str(conf)])


def serve(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[ServerProcess]:
    """The body of a server fixture: start ``server`` for an ``integration`` test, stop it after.

    A test that starts a server must be marked ``integration`` (``-m "not integration"`` then
    selects exactly the tests that need none); one that is not errors here."""
    if request.node.get_closest_marker("integration") is None:
        pytest.fail(
            f"{request.node.nodeid} starts a server ({request.fixturename}) but is not marked "
            "integration: add `pytestmark = pytest.mark.integration` to its module",
            pytrace=False,
        )
    server.start()
    try:
        yield server
    finally:
        server.stop()
