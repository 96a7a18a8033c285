"""A real Redis Sentinel group on loopback: a primary, a replica and three Sentinels, each its own process.

The Sentinels detect a dead primary after ``down_after_ms`` and promote the
replica; ``url`` is the ``redis+sentinel://`` URL every jobrelay service
connects with. Every process is started by this object and stopped by its
PID, also when the start itself fails.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import redis

from shared.processes import spawn
from shared.redis_server import RedisServer, find_redis_server, free_ports

SERVICE = "jobrelay"


class SentinelGroup:
    """A primary and a replica (``RedisServer``s) watched by three ``redis-server --sentinel`` processes."""

    def __init__(self, root: Path, *, down_after_ms: int = 1000, failover_timeout_ms: int = 5000) -> None:
        self.root = Path(root)
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        primary_port, replica_port, *sentinel_ports = free_ports(5)
        self.servers = [
            RedisServer(self.root / "primary", port=primary_port),
            RedisServer(
                self.root / "replica", port=replica_port, extra_args=["--replicaof", "127.0.0.1", str(primary_port)]
            ),
        ]
        self.sentinel_ports = sentinel_ports
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self, *, timeout_s: float = 30.0) -> SentinelGroup:
        try:
            for server in self.servers:
                server.start(timeout_s=timeout_s)
            for index, port in enumerate(self.sentinel_ports):
                self.sentinels.append(spawn([find_redis_server(), str(self._config(index, port)), "--sentinel"]))
            self.wait_ready(timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _config(self, index: int, port: int) -> Path:
        """A Sentinel rewrites its config file as it learns the group, so each has its own."""
        directory = self.root / f"sentinel{index}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "sentinel.conf"
        path.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            "daemonize no\n"
            f"dir {directory.resolve()}\n"
            f"logfile {(directory / 'sentinel.log').resolve()}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.servers[0].port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        return path

    def sentinel_client(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[index], socket_connect_timeout=1, socket_timeout=2)

    def primary_port(self, index: int = 0) -> int | None:
        """The primary's port as Sentinel ``index`` sees it now (None when it cannot be asked)."""
        client = self.sentinel_client(index)
        try:
            address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        except redis.RedisError:
            return None
        finally:
            client.close()
        return int(address[1]) if address else None

    def primary(self) -> RedisServer:
        """The server every Sentinel names as the primary now (the first one's answer)."""
        port = self.primary_port()
        return next(server for server in self.servers if server.port == port)

    def wait_ready(self, *, timeout_s: float) -> None:
        """Until every Sentinel knows the primary, its replica in sync and the other two Sentinels."""
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            for process in self.sentinels:
                if process.poll() is not None:
                    raise AssertionError(f"a Sentinel exited with {process.returncode}; see {self.root}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the Sentinel group was not ready within {timeout_s}s; see {self.root}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        for index in range(len(self.sentinel_ports)):
            client = self.sentinel_client(index)
            try:
                primary = client.sentinel_master(SERVICE)
                replicas = client.sentinel_slaves(SERVICE)
            except redis.RedisError:
                return False
            finally:
                client.close()
            if primary.get("num-other-sentinels", 0) < len(self.sentinel_ports) - 1:
                return False
            if not any(r.get("master-link-status") == "ok" and not r.get("is_sdown") for r in replicas):
                return False
        return True

    def wait_failover(self, old_port: int, *, timeout_s: float) -> int:
        """Until every Sentinel names a primary other than ``old_port`` and it answers as one; its port."""
        deadline = time.monotonic() + timeout_s
        while True:
            ports = {self.primary_port(index) for index in range(len(self.sentinel_ports))}
            port = ports.pop() if len(ports) == 1 else None
            if port is not None and port != old_port and self._is_primary(port):
                return port
            if time.monotonic() > deadline:
                raise AssertionError(f"no failover away from port {old_port} within {timeout_s}s; see {self.root}")
            time.sleep(0.1)

    @staticmethod
    def _is_primary(port: int) -> bool:
        client = redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2)
        try:
            return client.info("replication").get("role") == "master"
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
        for process in self.sentinels:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()

    def logs_text(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.root.glob("*/*.log")))
