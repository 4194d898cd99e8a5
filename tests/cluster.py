"""A throwaway Redis Cluster on loopback, built from the machine's redis-server and redis-cli."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field

import redis

from .servers import RedisServer, ServerUnavailable, find_binary, free_port, port_open


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class RedisClusterServers:
    """`masters` redis-server processes in cluster mode, joined by `redis-cli --cluster create`."""

    masters: int = 3
    node_timeout_ms: int = 2000
    full_coverage: bool = True
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The URL of one node (the cluster client discovers the others)."""
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        cli = find_binary("redis-cli")
        if cli is None or find_binary("redis-server") is None:
            raise ServerUnavailable("the cluster tests need redis-server and redis-cli")
        ports = _free_ports(2 * self.masters)
        try:
            for port, bus in zip(ports[: self.masters], ports[self.masters :], strict=True):
                node = RedisServer(
                    port=port,
                    args=(
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        # An explicit bus port: port + 10000 may not be free (or valid).
                        "--cluster-port", str(bus),
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                        "--cluster-require-full-coverage", "yes" if self.full_coverage else "no",
                    ),
                )  # fmt: skip
                self.nodes.append(node.start())
            subprocess.run(
                [
                    cli, "--cluster", "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas", "0", "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )  # fmt: skip
            self.wait_ok()
        except BaseException:
            self.cleanup()
            raise
        return self

    def client(self, node: int) -> redis.Redis:
        """A plain (non-cluster) client of one node."""
        return redis.Redis(host="127.0.0.1", port=self.nodes[node].port)

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Until every live node reports cluster_state:ok and knows every master."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for i, node in enumerate(self.nodes):
                if node.proc is None or not port_open(node.port):
                    continue
                with self.client(i) as c:
                    info = c.cluster("INFO")
                    states.append(
                        info.get("cluster_state") == "ok"
                        and int(info.get("cluster_known_nodes", 0)) == self.masters
                    )
            if states and all(states):
                return
            time.sleep(0.1)
        raise ServerUnavailable("the Redis Cluster did not become ok")

    def owner(self, key: str) -> int:
        """The index of the node that serves `key`'s slot."""
        with self.client(0) as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
            ranges = c.execute_command("CLUSTER", "SLOTS")
        for start, end, primary, *_ in ranges:
            if int(start) <= slot <= int(end):
                port = int(primary[1])
                return next(i for i, n in enumerate(self.nodes) if n.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def flush(self) -> None:
        for i, node in enumerate(self.nodes):
            if node.proc is not None:
                with self.client(i) as c:
                    c.flushall()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.stop()
            shutil.rmtree(node.dir, ignore_errors=True)
        self.nodes.clear()
