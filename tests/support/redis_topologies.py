"""A real Redis Cluster (3 primaries, 3 replicas) and a Sentinel group (a primary, a replica and
3 sentinels) of ``redis-server`` processes on free loopback ports, for the failover tests.

Failure detection is tuned down (node timeout and down-after 1 s) so that a killed primary is
replaced within seconds. Nothing is persisted: every node starts empty. ``kill_primary_under``
kills a primary under a streamer's writer and measures how the writer went through it.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from streamer.io.store.writer import BufferedBarWriter
from support.servers import ServerProcess, require
from support.waits import wait_until

NODE_TIMEOUT_MS = 1000
MASTER_NAME = "tickcast"


def _cli(port: int, *args: str) -> str:
    """``redis-cli`` against 127.0.0.1:``port``; its output, or '' when it cannot connect."""
    done = subprocess.run(
        [require("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return done.stdout if done.returncode == 0 else ""


def _info(port: int, section: str) -> dict[str, str]:
    lines = _cli(port, "info", section).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Block until ``condition()`` holds (set-up and tear-down only; tests use wait_until)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (each bound until all are found, so none repeats)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _node(data_dir: Path, port: int, *options: str) -> ServerProcess:
    node_dir = data_dir / f"redis-{port}"
    node_dir.mkdir(parents=True)
    argv = [require("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(node_dir)]
    argv += ["--repl-diskless-sync-delay", "0", *options]  # replicas sync at once
    return ServerProcess("redis", port, argv)


class Cluster:
    """Six cluster-enabled nodes joined by ``redis-cli --cluster create --cluster-replicas 1``."""

    def __init__(self, data_dir: Path) -> None:
        ports = free_ports(12)
        self.nodes = [
            _node(
                data_dir,
                ports[i],
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                # the bus port defaults to port + 10000, which may not exist for a high port
                "--cluster-port",
                str(ports[6 + i]),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--cluster-replica-validity-factor",
                "0",  # a replica always takes over, however long it was cut off
                "--cluster-announce-ip",
                "127.0.0.1",
            )
            for i in range(6)
        ]

    @property
    def url(self) -> str:
        """Every node as a startup node, as a deployment would list them."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        created = subprocess.run(
            [require("redis-cli"), "--cluster", "create"]
            + [f"127.0.0.1:{n.port}" for n in self.nodes]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        wait_for(
            lambda: self.healthy() and len(self.replicas()) == 3,
            30,
            "cluster_state:ok with 3 primaries and 3 replicas in sync",
        )

    def alive(self) -> list[ServerProcess]:
        return [n for n in self.nodes if n.proc is not None]

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok, 3 primaries serve all slots, and each replica
        is in sync with its primary (a replica that takes over mid-sync would lose data)."""
        for node in self.alive():
            state = _cli(node.port, "cluster", "info")
            if "cluster_state:ok" not in state or "cluster_slots_assigned:16384" not in state:
                return False
            replication = _info(node.port, "replication")
            if replication.get("role") == "slave" and (
                replication.get("master_link_status") != "up"
                or replication.get("master_sync_in_progress") != "0"
            ):
                return False
        return len(self.primaries()) == 3

    def primaries(self) -> list[ServerProcess]:
        """The live nodes that are primaries serving slots now."""
        out = []
        for node in self.alive():
            if _info(node.port, "replication").get("role") != "master":
                continue
            myself = next(
                (
                    line.split()
                    for line in _cli(node.port, "cluster", "nodes").splitlines()
                    if "myself" in line
                ),
                [],
            )
            if len(myself) > 8:  # slot ranges follow the 8 fixed fields
                out.append(node)
        return out

    def replicas(self) -> list[ServerProcess]:
        return [n for n in self.alive() if _info(n.port, "replication").get("role") == "slave"]

    def replica_of(self, primary: ServerProcess) -> ServerProcess:
        for node in self.alive():
            info = _info(node.port, "replication")
            if info.get("role") == "slave" and info.get("master_port") == str(primary.port):
                return node
        raise LookupError(f"no replica of 127.0.0.1:{primary.port}")

    def primary_of_slot(self, slot: int) -> ServerProcess:
        """The live primary serving ``slot``, by the slot ranges of its own CLUSTER NODES line."""
        for node in self.primaries():
            myself = next(
                line.split()
                for line in _cli(node.port, "cluster", "nodes").splitlines()
                if "myself" in line
            )
            for span in myself[8:]:
                if span.startswith("["):  # a slot being migrated
                    continue
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return node
        raise LookupError(f"no live primary serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(kill=True)


class SentinelGroup:
    """A primary, its replica, and 3 sentinels watching them as ``MASTER_NAME``."""

    def __init__(self, data_dir: Path) -> None:
        ports = free_ports(5)
        self.primary = _node(data_dir, ports[0])
        self.replica = _node(data_dir, ports[1], "--replicaof", "127.0.0.1", str(ports[0]))
        self.sentinels: list[ServerProcess] = []
        for port in ports[2:]:
            conf = data_dir / f"sentinel-{port}.conf"  # rewritten by the sentinel as it learns
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {data_dir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} 5000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.sentinels.append(
                ServerProcess("redis", port, [require("redis-server"), str(conf), "--sentinel"])
            )

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def master_port(self) -> int | None:
        """The primary's port as the sentinels agree on it (None while they disagree)."""
        ports: set[str] = set()
        for sentinel in self.sentinels:
            reply = _cli(sentinel.port, "sentinel", "get-master-addr-by-name", MASTER_NAME)
            ports.add(reply.split()[1] if len(reply.split()) == 2 else "?")
        port = ports.pop() if len(ports) == 1 else "?"
        return int(port) if port.isdigit() else None

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        wait_for(
            lambda: _info(self.replica.port, "replication").get("master_link_status") == "up",
            20,
            "the replica to sync",
        )
        for sentinel in self.sentinels:
            sentinel.start()

        def ready() -> bool:
            for s in self.sentinels:
                info = _info(s.port, "sentinel")
                master = info.get("master0", "")
                if "status=ok" not in master or "slaves=1" not in master:
                    return False
                if "sentinels=3" not in master:
                    return False
            return self.master_port() == self.primary.port

        wait_for(ready, 30, "3 sentinels to watch the primary and its replica")

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop(kill=True)


Topology = TypeVar("Topology", Cluster, SentinelGroup)


@contextmanager
def started(topology: Topology) -> Iterator[Topology]:
    """``topology`` started, and stopped (every process killed) on exit."""
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


def running_cluster(data_dir: Path) -> AbstractContextManager[Cluster]:
    return started(Cluster(data_dir))


def running_sentinels(data_dir: Path) -> AbstractContextManager[SentinelGroup]:
    return started(SentinelGroup(data_dir))


@dataclass(frozen=True)
class Failover:
    """How a writer went through the loss of its primary."""

    without_writes_s: float  # from the kill until the buffer had drained into the new primary
    most_buffered: int  # the most bars the writer held meanwhile


async def kill_primary_under(writer: BufferedBarWriter, kill: Callable[[], None]) -> Failover:
    """``kill`` the primary under a running ``writer``, then wait for the writer to notice and
    for its buffer to drain into the promoted replica."""
    most_buffered = 0

    async def sample() -> None:
        nonlocal most_buffered
        while True:
            most_buffered = max(most_buffered, writer.buffered)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        killed_at = time.monotonic()
        kill()
        await wait_until(lambda: not writer.connected, 10, "the writer to notice")
        await wait_until(
            lambda: writer.connected and writer.buffered == 0,
            30,
            "the buffer to drain into the promoted replica",
        )
        return Failover(time.monotonic() - killed_at, most_buffered)
    finally:
        sampler.cancel()
