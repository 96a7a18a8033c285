"""Worker lifespans in real ``jobrelay worker`` processes: per-process start and stop, and the bad cases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shared.broker.publishing import build_broker
from shared.errors import FieldError
from shared.job import Job, JobStatus
from shared.redis_server import free_port
from shared.store.engine import create_store_engine
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from shared.submission.submitter import Submitter
from shared.submission.validation import Submission, build_job


def _events(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    return [(event, name, int(pid)) for event, name, pid in (line.split() for line in path.read_text().splitlines())]


@contextmanager
def worker(
    tmp_path: Path, redis_url: str, *, processes: int, extra_env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "DATA_DIR": str(tmp_path),
        "TASK_MODULES": "tests.services.worker.lifespan_tasks",
        "WORKER_METRICS_BIND": f"127.0.0.1:{free_port()}",
        "LOG_JSON": "off",
        "LIFESPAN_LOG": str(tmp_path / "lifespans.log"),
        **extra_env,
    }
    args = [sys.executable, "-m", "services.cli", "worker", "--queues", "default"]
    args += ["--processes", str(processes), "--threads", "2", "--grace", "5"]
    process = subprocess.Popen(args, env=env, stdout=(tmp_path / "worker.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for(condition: object, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout_s}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _submit_and_wait(tmp_path: Path, redis_url: str, task: str, timeout_s: float = 20.0) -> Job:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        store = JobStore(engine)
        submitter = Submitter(store, TaskRegistry(engine, cache_s=0), build_broker(redis_url), 1 << 20)
        errors: list[FieldError] = []
        job = build_job({"task": task, "args": {}}, "", submitter.registry, Submission(), errors)
        assert job is not None, errors
        job_id = submitter.submit([job])[0][0].id
        deadline = time.monotonic() + timeout_s
        while not (found := store.get(job_id)).status.is_final:
            assert time.monotonic() < deadline, (
                f"job {job_id} is {found.status}:\n{(tmp_path / 'worker.log').read_text()}"
            )
            time.sleep(0.05)
        return found
    finally:
        engine.dispose()


def test_every_worker_process_enters_its_lifespans_before_jobs_and_exits_them_at_sigterm(
    tmp_path: Path, redis_url: str
) -> None:
    events_path, log = tmp_path / "lifespans.log", tmp_path / "worker.log"
    # Given: a worker of two processes, with a sync and an async lifespan declared
    with worker(tmp_path, redis_url, processes=2, extra_env={}) as process:
        _wait_for(lambda: len(_events(events_path)) >= 4, 60, "both processes' lifespan starts", log)

        # When: tasks use the resources, one of them in an isolation child
        sync_job = _submit_and_wait(tmp_path, redis_url, "lifespans.sync_uses")
        async_job = _submit_and_wait(tmp_path, redis_url, "lifespans.async_uses")
        isolated_job = _submit_and_wait(tmp_path, redis_url, "lifespans.isolated_uses", timeout_s=60)

        # And: the worker is stopped
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0

    # Then: each task saw its own process's resources, the async one on the loop its client was made on
    assert sync_job.status is JobStatus.SUCCEEDED and async_job.status is JobStatus.SUCCEEDED, log.read_text()
    assert sync_job.result["pool"] == f"pool-of-{sync_job.result['pid']}"
    assert async_job.result == {"same_loop": True, "pid": async_job.result["pid"], "task": "lifespans.async_uses"}
    # And: the isolated task ran in a child of its own, with the resources that child's lifespans gave
    assert isolated_job.status is JobStatus.SUCCEEDED, log.read_text()
    child_pid = isolated_job.result["pid"]
    assert isolated_job.result["pool"] == f"pool-of-{child_pid}"
    assert child_pid not in (sync_job.result["pid"], async_job.result["pid"])
    # And: each process (the two worker processes and the child) entered in order and exited in reverse
    by_pid: dict[int, list[str]] = {}
    for event, name, pid in _events(events_path):
        by_pid.setdefault(pid, []).append(f"{event} {name}")
    assert len(by_pid) == 3 and child_pid in by_pid, by_pid
    for sequence in by_pid.values():
        assert sequence == ["start pool", "start http_client", "stop http_client", "stop pool"]


@pytest.mark.parametrize(
    ("mode", "extra_env", "says"),
    [
        ("raise_start", {}, "ConnectionRefusedError: the pool's database refused the connection"),
        ("hang_start", {"WORKER_STARTUP_TIMEOUT_S": "1"}, "it has not yielded within 1s"),
    ],
)
def test_a_lifespan_that_cannot_start_stops_the_worker_with_its_error_not_a_crash_loop(
    tmp_path: Path, redis_url: str, mode: str, extra_env: dict[str, str], says: str
) -> None:
    log = tmp_path / "worker.log"
    # Given: a lifespan that raises, or never yields, at start
    with worker(tmp_path, redis_url, processes=1, extra_env={"LIFESPAN_MODE": mode, **extra_env}) as process:
        # Then: the worker exits non-zero, once, saying which lifespan and why
        code = process.wait(timeout=60)
    text = log.read_text()
    assert code == 1, text
    assert f"worker lifespan tests.services.worker.lifespan_tasks.pool failed at start: {says}" in text
    assert "could not start (a worker lifespan failed" in text
    starts = [entry for entry in _events(tmp_path / "lifespans.log") if entry[0] == "start" and entry[1] == "pool"]
    assert len(starts) == 1, starts


def test_a_lifespan_that_raises_at_stop_is_logged_and_the_others_still_exit(tmp_path: Path, redis_url: str) -> None:
    events_path, log = tmp_path / "lifespans.log", tmp_path / "worker.log"
    with worker(tmp_path, redis_url, processes=1, extra_env={"LIFESPAN_MODE": "raise_stop"}) as process:
        _wait_for(lambda: len(_events(events_path)) >= 2, 60, "the lifespan starts", log)
        # When: the worker is stopped, its async lifespan raising at its exit
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    # Then: the error is logged with the lifespan's name, the sync one still exits, within the grace
    text = log.read_text()
    assert code == 0, text
    assert time.monotonic() - stopped < 5 + 5
    assert "worker lifespan tests.services.worker.lifespan_tasks.http_client failed at exit" in text
    assert "RuntimeError: the client would not close" in text
    assert [f"{event} {name}" for event, name, _ in _events(events_path)][-2:] == ["stop http_client", "stop pool"]


def test_jobrelay_up_stops_with_the_lifespan_error_shown(tmp_path: Path) -> None:
    # Given: the whole stack for a laptop, with a task module whose lifespan fails at start
    api_port, worker_port, scheduler_port = free_port(), free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "API_KEYS")},
        "DATA_DIR": str(tmp_path / "data"),
        "API_BIND": f"127.0.0.1:{api_port}",
        "WORKER_METRICS_BIND": f"127.0.0.1:{worker_port}",
        "SCHEDULER_METRICS_BIND": f"127.0.0.1:{scheduler_port}",
        "TASK_MODULES": "tests.services.worker.lifespan_tasks",
        "LIFESPAN_LOG": str(tmp_path / "lifespans.log"),
        "LIFESPAN_MODE": "raise_start",
        "LOG_JSON": "off",
    }
    log = tmp_path / "up.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        # Then: it stops by itself, non-zero, with the lifespan's error in its output
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    text = log.read_text()
    assert code == 1, text[-4000:]
    assert "worker lifespan tests.services.worker.lifespan_tasks.pool failed at start" in text
    assert "jobrelay up: worker exited with 1" in text
    starts = [entry for entry in _events(tmp_path / "lifespans.log") if entry[:2] == ("start", "pool")]
    assert len(starts) == 1, starts


def test_an_isolation_child_whose_lifespan_fails_fails_its_job_with_that_error(tmp_path: Path, redis_url: str) -> None:
    events_path, log = tmp_path / "lifespans.log", tmp_path / "worker.log"
    # Given: lifespans that start in the worker process but raise in an isolation child
    with worker(tmp_path, redis_url, processes=1, extra_env={"LIFESPAN_MODE": "raise_in_child"}):
        _wait_for(lambda: len(_events(events_path)) >= 2, 60, "the lifespan starts", log)
        # When: an isolated job runs
        job = _submit_and_wait(tmp_path, redis_url, "lifespans.isolated_uses", timeout_s=60)
        # Then: the job fails with the lifespan's error, and the worker still serves thread tasks
        assert _submit_and_wait(tmp_path, redis_url, "lifespans.sync_uses").status is JobStatus.SUCCEEDED
    assert job.status is JobStatus.FAILED, log.read_text()
    assert job.error is not None and job.error["type"] == "LifespanError"
    assert job.error["message"] == (
        "worker lifespan tests.services.worker.lifespan_tasks.pool failed at start: "
        "ConnectionRefusedError: the child's database refused the connection"
    )
    assert "isolation child" in log.read_text() and "cannot start" in log.read_text()
