"""``jobrelay worker`` as real processes (its supervisor, its children) on a private Redis and SQLite.

The harness of every test of a whole supervised worker: ``tests/e2e/test_limits.py``,
``tests/services/worker/test_supervisor.py`` and ``test_flow.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.broker.publishing import build_broker
from shared.errors import FieldError
from shared.job import Job
from shared.redis_server import free_port
from shared.store.engine import create_store_engine
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from shared.submission.submitter import Submitter
from shared.submission.validation import Submission, build_job


@dataclass
class SupervisedWorker:
    process: subprocess.Popen[bytes]
    store: JobStore
    submitter: Submitter
    data_dir: Path
    log_path: Path

    def submit(self, body: dict) -> Job:
        errors: list[FieldError] = []
        job = build_job(body, "", self.submitter.registry, Submission(), errors)
        assert job is not None, errors
        return self.submitter.submit([job])[0][0]

    def wait(self, job_id: str, until: Callable[[Job], bool], timeout_s: float) -> Job:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.store.get(job_id)
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {job.status} after {timeout_s}s:\n{self.log()}")
            time.sleep(0.02)

    def children(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(self.process.pid):
                        found.append(int(entry.name))
                except (OSError, IndexError):
                    continue
        return found

    def wait_children(self, until: Callable[[list[int]], bool], timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while not until(children := self.children()):
            assert time.monotonic() < deadline, f"children {children} after {timeout_s}s:\n{self.log()}"
            time.sleep(0.05)
        return children

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.store.engine.dispose()


def start_worker(
    redis_url: str,
    tmp_path: Path,
    *,
    task_modules: str,
    queues: str,
    processes: int = 1,
    threads: int = 2,
    extra_env: dict[str, str] | None = None,
) -> SupervisedWorker:
    """A supervisor with its children up (each beating, ``worker-alive`` written); stopped by its caller."""
    database_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp_path),
        "TASK_MODULES": task_modules,
        "WORKER_METRICS_BIND": f"127.0.0.1:{free_port()}",
        "LOG_JSON": "off",
        **(extra_env or {}),
    }
    log_path = tmp_path / "worker.log"
    args = ["worker", "--queues", queues, "--processes", str(processes), "--threads", str(threads), "--grace", "5"]
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    engine = create_store_engine(database_url)
    worker = SupervisedWorker(
        process=process,
        store=JobStore(engine),
        submitter=Submitter(JobStore(engine), TaskRegistry(engine, cache_s=0), build_broker(redis_url), 1 << 20),
        data_dir=tmp_path,
        log_path=log_path,
    )
    try:
        # NOTE: a whole minute: children importing the task modules on a loaded machine take a while.
        deadline = time.monotonic() + 60
        while not (len(worker.children()) == processes and (tmp_path / "worker-alive").exists()):
            assert process.poll() is None and time.monotonic() < deadline, worker.log()
            time.sleep(0.05)
    except BaseException:
        worker.stop()
        raise
    return worker
