"""Shared fixtures: real redis-server and mosquitto processes on free loopback ports.

Each fixture starts its own server and stops it afterwards, so the suite passes whether or not
a system instance is running. The servers are Debian packages (see the Makefile's deps target).
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

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


def _require(binary: str) -> str:
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


def _redis_server(tmp: Path) -> ServerProcess:
    port = free_port()
    argv = [
        _require("redis-server"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp),
    ]
    return ServerProcess("redis", port, argv)


def _mosquitto(tmp: Path) -> ServerProcess:
    port = free_port()
    conf = tmp / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\nset_tcp_nodelay true\n"
    )
    return ServerProcess("mosquitto", port, [_require("mosquitto"), "-c", str(conf)])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = _redis_server(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mosquitto_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = _mosquitto(tmp_path)
    server.start()
    yield server
    server.stop()
