"""Real ``jobrelay scheduler`` processes on the session's Redis and a SQLite file of the test's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine

from services.scheduler.ticks import id_time
from services.worker.tasks import load_task_modules
from shared.redis_server import free_port
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobFilter, JobStore
from shared.store.tasks import TaskRegistry

REPO = Path(__file__).resolve().parents[3]
LEASE_S = 3


@dataclass
class SchedulerProcess:
    name: str
    process: subprocess.Popen[bytes]
    metrics_url: str
    log_path: Path

    def metric(self, name: str) -> float | None:
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as resp:
                text = resp.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def is_leader(self) -> bool:
        return self.process.poll() is None and self.metric("jobrelay_scheduler_is_leader") == 1.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@dataclass
class SchedulerStack:
    """What a test needs to run schedulers: the env, the store and a way to start replicas."""

    tmp: Path
    env: dict[str, str]
    engine: Engine
    processes: list[SchedulerProcess] = field(default_factory=list)

    def start(self, name: str) -> SchedulerProcess:
        port = free_port()
        log_path = self.tmp / f"scheduler-{name}.log"
        env = {**self.env, "SCHEDULER_METRICS_BIND": f"127.0.0.1:{port}"}
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "scheduler"],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started = SchedulerProcess(name, process, f"http://127.0.0.1:{port}/metrics", log_path)
        self.processes.append(started)
        return started

    def wait_for(self, what: str, check: Callable[[], object], timeout_s: float) -> object:
        deadline = time.monotonic() + timeout_s
        while True:
            found = check()
            if found:
                return found
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.log()}" for p in self.processes)
                raise AssertionError(f"{what}: not within {timeout_s}s\n{logs}")
            time.sleep(0.05)

    def leader(self, among: list[SchedulerProcess] | None = None, timeout_s: float = 15) -> SchedulerProcess:
        candidates = among if among is not None else self.processes

        def find() -> SchedulerProcess | None:
            leaders = [p for p in candidates if p.is_leader()]
            return leaders[0] if len(leaders) == 1 else None

        found = self.wait_for("one leader", find, timeout_s)
        assert isinstance(found, SchedulerProcess)
        return found

    def fire_times(self, schedule_id: str) -> list[float]:
        """Unix times of the ticks that made a job, from the job ids; sorted."""
        items = JobStore(self.engine).page(JobFilter(schedule_id=schedule_id), limit=500).items
        return sorted(id_time(job.id).timestamp() for job in items)

    def stop(self, process: SchedulerProcess, signum: int = signal.SIGTERM, timeout_s: float = 20) -> int:
        process.process.send_signal(signum)
        try:
            return process.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.process.kill()
            raise AssertionError(f"scheduler {process.name} did not stop in {timeout_s}s\n{process.log()}") from None


@pytest.fixture
def scheduler_stack(tmp_path: Path, redis_url: str, sqlite_url: str) -> Iterator[SchedulerStack]:
    engine = create_store_engine(sqlite_url)
    migrate(engine)
    TaskRegistry(engine).register(load_task_modules().specs(), registered_by="test")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("API_KEYS", "SCHEDULES_FILE", "PROMETHEUS_MULTIPROC_DIR")},
        "REDIS_URL": redis_url,
        "DATABASE_URL": sqlite_url,
        "DATA_DIR": str(tmp_path / "data"),
        "LEADER_LEASE_S": str(LEASE_S),
        "LOG_LEVEL": "INFO",
    }
    stack = SchedulerStack(tmp=tmp_path, env=env, engine=engine)
    yield stack
    for process in stack.processes:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait(timeout=10)
    engine.dispose()
