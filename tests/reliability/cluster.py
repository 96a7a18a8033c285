"""The whole stack as separate real processes that a fault can hit one at a time.

``jobrelay up`` stops everything when one child exits, so a test cannot kill
the scheduler leader under it. ``Cluster`` starts the same commands ``up``
starts (``jobrelay api``, ``jobrelay worker``, ``jobrelay scheduler``, twice
here for a leader and a standby) against a private ``redis-server`` it can
kill and restart on the same port and data, and a SQL store (a SQLite file,
or a PostgreSQL URL). ``Cluster.stack`` is the e2e ``Stack`` over the same
processes, for its HTTP helpers and ``pids_of``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine

from services.scheduler.leader import LEADER_KEY
from shared.broker.connections import connect
from shared.redis_server import RedisServer, free_port
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from tests.disk import small_tmpfs
from tests.e2e.conftest import Stack
from tests.reliability.effects_db import EFFECTS_DB_ENV
from tests.sentinel import SentinelGroup

REPO = Path(__file__).resolve().parents[2]
TASK_MODULE = "tests.reliability.effect"
#: Variables of the test's own environment that must not leak into the cluster.
_ISOLATED = ("REDIS_URL", "DATABASE_URL", "API_KEYS", "PROMETHEUS_MULTIPROC_DIR", "TASK_MODULES", "SCHEDULES_FILE")


@dataclass(frozen=True)
class ApiKeys:
    """One key per scope combination, so every endpoint can be tried with a key that lacks its scope."""

    admin: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    read: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    write: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    read_write: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def env(self) -> str:
        return (
            f"ops:{self.admin}:admin reader:{self.read}:read writer:{self.write}:write ci:{self.read_write}:read+write"
        )

    def all(self) -> list[str]:
        return [self.admin, self.read, self.write, self.read_write]


class Component:
    """One ``jobrelay <command>`` process; started again under the same name after a fault."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Component:
        self.starts += 1
        log = (self.logs / f"{self.name}.{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *self.args],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signum)

    def stop(self, *, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit code."""
        if self.process is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def log_text(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted(self.logs.glob(f"{self.name}.*.log")))


class Cluster:
    """API, worker supervisor and schedulers on a private Redis and a SQL store, with their logs in ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        database_url: str | None = None,
        env: dict[str, str] | None = None,
        schedulers: int = 2,
        worker_processes: int = 2,
        worker_threads: int = 4,
        worker_grace_s: float = 15.0,
        data_disk: str | None = None,
        sentinels: bool = False,
    ) -> None:
        """``data_disk``: a size (``2m``) to put ``DATA_DIR`` on a tmpfs of its own, which a scenario
        can fill (the store, the metric files, results; Redis and the logs stay outside).
        ``sentinels``: Redis is a Sentinel group (``tests/sentinel.py``) instead of one server."""
        self.root = root.resolve()
        self.data_dir = self.root / "data"
        self.logs = self.root / "logs"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.keys = ApiKeys()
        self.redis: RedisServer | SentinelGroup = (
            SentinelGroup(self.root / "redis") if sentinels else RedisServer(self.root / "redis")
        )
        self.database_url = database_url or f"sqlite:///{self.data_dir / 'jobrelay.db'}"
        self.effects_db = self.root / "effects.db"
        self.worker_processes = worker_processes
        self.api_port = free_port()
        self.worker_metrics_port = free_port()
        self.base_env = {
            **{k: v for k, v in os.environ.items() if k not in _ISOLATED},
            "DATA_DIR": str(self.data_dir),
            "REDIS_URL": self.redis.url,
            "DATABASE_URL": self.database_url,
            "API_BIND": f"127.0.0.1:{self.api_port}",
            "API_KEYS": self.keys.env(),
            "TASK_MODULES": TASK_MODULE,
            EFFECTS_DB_ENV: str(self.effects_db),
            "WORKER_METRICS_BIND": f"127.0.0.1:{self.worker_metrics_port}",
            "WORKER_PROCESSES": str(worker_processes),
            "WORKER_THREADS": str(worker_threads),
            "RESULT_INLINE_MAX_BYTES": "1024",
            "LOG_LEVEL": "INFO",
            **(env or {}),
        }
        self.api = Component("api", ["api"], self.base_env, self.logs)
        self.worker = Component("worker", ["worker", "--grace", str(worker_grace_s)], self.base_env, self.logs)
        self.scheduler_ports = [free_port() for _ in range(schedulers)]
        self.schedulers = [
            Component(
                f"scheduler{i}",
                ["scheduler"],
                {**self.base_env, "SCHEDULER_METRICS_BIND": f"127.0.0.1:{port}"},
                self.logs,
            )
            for i, port in enumerate(self.scheduler_ports)
        ]
        self.engine: Engine | None = None
        self.data_disk = data_disk
        self._disk = contextlib.ExitStack()
        self.stack = Stack(
            process=None,  # type: ignore[arg-type]  # the API below; Stack only needs it to stop `up`
            base_url=f"http://127.0.0.1:{self.api_port}",
            token=self.keys.admin,
            data_dir=self.data_dir,
            log_path=self.logs / "api.1.log",
            worker_metrics_url=f"http://127.0.0.1:{self.worker_metrics_port}/metrics",
        )

    # -- lifecycle ---------------------------------------------------------

    def start(self, *, timeout_s: float = 60.0) -> Cluster:
        """Raises ``tests.disk.CannotMount`` when ``data_disk`` was asked for and no tmpfs can be mounted."""
        if self.data_disk is not None:
            self._disk.enter_context(small_tmpfs(self.data_dir, size=self.data_disk))
        self.redis.start()
        self.engine = create_store_engine(self.database_url)
        migrate(self.engine)
        self.worker.start()
        for scheduler in self.schedulers:
            scheduler.start()
        self.api.start()
        self.stack.process = self.api.process  # type: ignore[assignment]
        deadline = time.monotonic() + timeout_s
        self.wait_ready(deadline)
        return self

    def wait_ready(self, deadline: float) -> None:
        """Bounded: the API ready, every worker process up with the test tasks registered, a leader elected."""
        while True:
            for component in (self.api, self.worker, *self.schedulers):
                if not component.alive():
                    raise AssertionError(f"{component.name} exited early:\n{component.log_text()[-4000:]}")
            if self.ready():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"cluster not ready in time:\n{self.api.log_text()[-2000:]}")
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            status, _ = self.call("GET", "/readyz", token=None, timeout_s=2)
            if status != 200:
                return False
            status, tasks = self.call("GET", "/v1/tasks", timeout_s=2)
        except OSError:
            return False
        names = {item["name"] for item in tasks.get("items", [])} if status == 200 else set()
        return (
            "reliability.effect" in names
            and len(self.worker_pids()) == self.worker_processes
            and self.leader() is not None
        )

    def close(self) -> None:
        """Stop everything this cluster started, children included (found by their DATA_DIR)."""
        for component in (self.api, *self.schedulers, self.worker):
            component.stop(timeout_s=30)
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.redis.stop()
        if self.engine is not None:
            self.engine.dispose()
        self._disk.close()

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- what faults aim at ------------------------------------------------

    @property
    def store(self) -> JobStore:
        assert self.engine is not None
        return JobStore(self.engine)

    def redis_client(self) -> redis.Redis:
        return connect(self.redis.url, socket_timeout=5, socket_connect_timeout=2)

    def leftover_pids(self) -> list[int]:
        """Processes still running with this cluster's DATA_DIR (its own and their children)."""
        marker = f"DATA_DIR={self.data_dir}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
        return found

    def worker_pids(self) -> list[int]:
        """The worker processes (children of the supervisor) alive now."""
        return sorted(self.stack.pids_of("services.worker.process"))

    def wait_worker_pids(self, count: int, *, timeout_s: float, exclude: set[int] | None = None) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while True:
            pids = [pid for pid in self.worker_pids() if pid not in (exclude or set())]
            if len(pids) >= count:
                return pids
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(pids)} of {count} worker processes after {timeout_s}s")
            time.sleep(0.05)

    def identities(self) -> dict[str, Component]:
        """Scheduler lease identity -> component, read from each one's boot log line."""
        found = {}
        for scheduler in self.schedulers:
            log_path = self.logs / f"{scheduler.name}.{scheduler.starts}.log"
            for line in log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    message = json.loads(line)["message"]
                    if message.startswith("scheduler ") and " started; lease TTL" in message:
                        found[message.split()[1]] = scheduler
        return found

    def wait_standing_by(self, scheduler: Component, *, timeout_s: float) -> None:
        """Until ``scheduler`` has booted and polls the lease (its identity is in its log)."""
        deadline = time.monotonic() + timeout_s
        while scheduler not in self.identities().values():
            if not scheduler.alive() or time.monotonic() > deadline:
                raise AssertionError(f"{scheduler.name} did not boot:\n{scheduler.log_text()[-3000:]}")
            time.sleep(0.05)

    def leader(self) -> Component | None:
        """The scheduler holding the lease now, per Redis."""
        try:
            client = self.redis_client()
            holder = client.get(LEADER_KEY)
            client.close()
        except redis.RedisError:
            return None
        if holder is None:
            return None
        return self.identities().get(holder.decode())

    def wait_leader(self, *, timeout_s: float, other_than: Component | None = None) -> tuple[Component, float]:
        """The next leader (not ``other_than``) and how long it took to appear."""
        started = time.monotonic()
        while True:
            leader = self.leader()
            if leader is not None and leader is not other_than and leader.alive():
                return leader, time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"no scheduler took the lease within {timeout_s}s")
            time.sleep(0.05)

    def logs_text(self) -> str:
        """Every log this cluster wrote: its processes' and every redis-server's (Sentinels included)."""
        parts = [path.read_text(errors="replace") for path in sorted(self.logs.glob("*.log"))]
        parts.extend(path.read_text(errors="replace") for path in sorted((self.root / "redis").rglob("*.log")))
        return "\n".join(parts)

    # -- HTTP ----------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | bool | None = True,
        timeout_s: float = 10.0,
    ) -> tuple[int, Any]:
        """One request on a fresh connection; ``token=True`` is the admin key, None sends no header."""
        client = Http(self.api_port, timeout_s=timeout_s)
        try:
            headers = {}
            if token is True:
                headers["Authorization"] = f"Bearer {self.keys.admin}"
            elif isinstance(token, str):
                headers["Authorization"] = f"Bearer {token}"
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            status, _headers, raw = client.request(method, path, data, headers)
            return status, json.loads(raw) if raw else None
        finally:
            client.close()


class Http:
    """A keep-alive HTTP/1.1 client for one thread, reconnecting after any error."""

    def __init__(self, port: int, *, timeout_s: float = 10.0) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
        try:
            self._conn.request(method, path, body=body, headers=headers or {})
            resp = self._conn.getresponse()
            data = resp.read()
            answer = resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            if resp.will_close:
                self.close()
            return answer
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
