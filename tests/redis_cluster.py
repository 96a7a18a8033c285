"""A real Redis Cluster on loopback: three primaries, each ``redis-server --cluster-enabled yes``.

``redis-cli --cluster create`` splits the 16,384 hash slots among them. Every
process is started by this object and stopped by its PID, also when the start
itself fails.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from shared.redis_server import RedisServer, free_ports


class RedisClusterGroup:
    """Three cluster-enabled ``RedisServer``s joined into one cluster with no replicas."""

    def __init__(self, root: Path, *, primaries: int = 3) -> None:
        self.root = Path(root)
        ports = free_ports(2 * primaries)
        # NOTE: the cluster bus defaults to the port + 10000, past 65535 for most free ports: each node
        # gets a free bus port of its own.
        self.servers = [
            RedisServer(
                self.root / f"node{index}",
                port=port,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    str(bus),
                ],
            )
            for index, (port, bus) in enumerate(zip(ports[:primaries], ports[primaries:], strict=True))
        ]

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{server.port}" for server in self.servers]

    def start(self, *, timeout_s: float = 30.0) -> RedisClusterGroup:
        try:
            for server in self.servers:
                server.start(timeout_s=timeout_s)
            cli = shutil.which("redis-cli")
            if cli is None:
                raise AssertionError("redis-cli is needed to create the cluster (Debian's redis-tools)")
            subprocess.run(
                [cli, "--cluster", "create", *self.nodes, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=timeout_s,
            )
            self.wait_ok(timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, *, timeout_s: float) -> None:
        """Until every node says the cluster is ok (all slots served) and knows every other node."""
        deadline = time.monotonic() + timeout_s
        while not all(self._node_ok(server.port) for server in self.servers):
            if time.monotonic() > deadline:
                raise AssertionError(f"the cluster was not ok within {timeout_s}s; see {self.root}")
            time.sleep(0.1)

    def _node_ok(self, port: int) -> bool:
        client = redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2)
        try:
            info = client.execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return False
        finally:
            client.close()
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and f"cluster_known_nodes:{len(self.servers)}" in text

    def client(self) -> RedisCluster:
        host, port = self.nodes[0].split(":")
        return RedisCluster(host=host, port=int(port), socket_connect_timeout=2, socket_timeout=10)

    def port_of(self, key: str) -> int:
        """The port of the primary that serves ``key``'s slot."""
        client = self.client()
        try:
            node = client.get_node_from_key(key)
        finally:
            client.close()
        return int(node.port)

    def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
