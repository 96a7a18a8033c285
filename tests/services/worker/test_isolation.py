"""``@task(isolation="process")`` and recycling, on a real ``jobrelay worker`` with a private Redis and SQLite.

The tasks (``isolated_tasks.py``) abort, segfault, hold the GIL past their limit, block in C
and leak; each must cost only its own job, recorded by its retry policy with the cause named,
while a thread job running beside it in the same worker process finishes once, undisturbed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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

#: Generous bounds for a busy machine (two cores, other test runs beside).
FINISH_S = 30.0


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    store: JobStore
    submitter: Submitter
    log_path: Path
    metrics_url: str

    def submit(self, task: str, **args: object) -> Job:
        errors: list[FieldError] = []
        job = build_job({"task": task, "args": args}, "", self.submitter.registry, Submission(), errors)
        assert job is not None, errors
        return self.submitter.submit([job])[0][0]

    def wait(
        self, job_id: str, until: Callable[[Job], bool] = lambda j: j.status.is_final, timeout_s: float = FINISH_S
    ) -> Job:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.store.get(job_id)
            if until(job):
                return job
            assert time.monotonic() < deadline, f"job {job_id} is {job.status} after {timeout_s}s:\n{self.log()}"
            time.sleep(0.05)

    def children(self) -> set[int]:
        """The supervisor's worker processes."""
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(self.process.pid):
                        found.add(int(entry.name))
                except (OSError, IndexError):
                    continue
        return found

    def recycled(self, reason: str, kind: str) -> float:
        """``jobrelay_worker_recycled_total{reason, kind}`` as the supervisor serves it."""
        text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        wanted = f'jobrelay_worker_recycled_total{{kind="{kind}",reason="{reason}"}}'
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted)]
        return sum(values)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []
    engines = []

    def start(*, threads: int = 2, **env: str) -> Worker:
        database_url = f"sqlite:///{tmp_path / 'jobs.db'}"
        port = free_port()
        log_path = tmp_path / "worker.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--queues", "default,isolated",
             "--threads", str(threads), "--grace", "5"],
            env={
                **os.environ,
                "REDIS_URL": redis_url,
                "DATABASE_URL": database_url,
                "DATA_DIR": str(tmp_path),
                "TASK_MODULES": "tests.services.worker.isolated_tasks",
                "WORKER_METRICS_BIND": f"127.0.0.1:{port}",
                "LOG_JSON": "off",
                **env,
            },
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        engine = create_store_engine(database_url)
        engines.append(engine)
        registry = TaskRegistry(engine, cache_s=0)
        worker = Worker(
            process=process,
            store=JobStore(engine),
            submitter=Submitter(JobStore(engine), registry, build_broker(redis_url), 1 << 20),
            log_path=log_path,
            metrics_url=f"http://127.0.0.1:{port}/metrics",
        )
        started.append(worker)
        deadline = time.monotonic() + 30
        while not (worker.children() and (tmp_path / "worker-alive").exists()):
            assert process.poll() is None and time.monotonic() < deadline, worker.log()
            time.sleep(0.05)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
            try:
                worker.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
    for engine in engines:
        engine.dispose()


def crashed(cause: str) -> dict[str, object]:
    return {"type": "WorkerCrashed", "message": f"worker process died: {cause}", "retryable": True}


def shown(job: Job) -> dict[str, object]:
    """The job's error as every reader sees it (the traceback is for admins)."""
    assert job.error is not None
    return {key: job.error[key] for key in ("type", "message", "retryable")}


def test_an_isolated_crash_costs_only_its_job_by_its_retry_policy(start_worker: Callable[..., Worker]) -> None:
    # Given a worker process running a thread job that takes a few seconds
    worker = start_worker()
    processes = worker.children()
    beside = worker.submit("diagnostics.sleep", seconds=4)
    worker.wait(beside.id, lambda j: j.status is JobStatus.RUNNING)
    # When isolated jobs segfault (no retries) and abort (one retry) in the other thread
    segfault = worker.submit("isolated.segfault")
    abort = worker.submit("isolated.abort")
    # Then each is recorded failed for good, dead-lettered, the signal named, once per attempt
    done = worker.wait(segfault.id)
    assert (done.status, done.attempts, done.dead, shown(done)) == (JobStatus.FAILED, 1, True, crashed("SIGSEGV"))
    done = worker.wait(abort.id)
    assert (done.status, done.attempts, done.dead, shown(done)) == (JobStatus.FAILED, 2, True, crashed("SIGABRT"))
    # And the job beside them finished, once, in the same worker process, which never died
    done = worker.wait(beside.id)
    assert (done.status, done.attempts) == (JobStatus.SUCCEEDED, 1), worker.log()
    assert worker.children() == processes
    # And a new child takes the next isolated job, its progress written as a thread task's
    after = worker.wait(worker.submit("isolated.whoami").id)
    assert after.status is JobStatus.SUCCEEDED and after.progress == {"current": 1, "total": 2, "message": "halfway"}
    assert (after.result["queue"], after.result["attempt"]) == ("isolated", 1)


def test_a_gil_holding_isolated_task_is_killed_at_its_hard_limit_and_the_process_serves_on(
    start_worker: Callable[..., Worker],
) -> None:
    # Given an isolated task holding the GIL in one C call, far past its 1 s time limit
    worker = start_worker()
    processes = worker.children()
    # (its forkserver started: the 1 s limit is the task's, not a busy machine's start of Python)
    assert worker.wait(worker.submit("isolated.whoami").id).status is JobStatus.SUCCEEDED
    spin = worker.submit("isolated.spin")
    worker.wait(spin.id, lambda j: j.status is JobStatus.RUNNING)
    started = time.monotonic()
    # When it runs, a thread job submitted beside it runs at once (its process is not blocked)
    echo = worker.submit("diagnostics.echo", message="beside")
    assert worker.wait(echo.id).result == "beside"
    assert time.monotonic() - started < 5.0, "the worker process was held by the isolated task's GIL"
    # Then at the hard limit (1 s + 5 s grace) its child is killed and the job fails saying so
    done = worker.wait(spin.id)
    assert done.status is JobStatus.FAILED and done.attempts == 1
    assert shown(done)["type"] == "HardTimeLimitExceeded", (done.error, worker.log())
    assert "isolated process was killed" in str(shown(done)["message"])
    # And the worker process lives on (no replacement), a new child serving the next isolated job
    assert worker.children() == processes
    assert worker.wait(worker.submit("isolated.whoami").id).status is JobStatus.SUCCEEDED


def test_cancelling_an_isolated_job_blocked_in_c_kills_its_child_within_three_seconds(
    start_worker: Callable[..., Worker],
) -> None:
    # Given an isolated job blocked in a C call that no exception interrupts
    worker = start_worker(threads=1)
    first = worker.wait(worker.submit("isolated.whoami").id).result
    blocked = worker.submit("isolated.block", seconds=60)
    worker.wait(blocked.id, lambda j: j.status is JobStatus.RUNNING)
    time.sleep(0.5)
    # When it is cancelled
    worker.store.cancel(blocked.id)
    asked = time.monotonic()
    # Then it is cancelled within three seconds, and a new child serves the next job
    done = worker.wait(blocked.id)
    assert done.status is JobStatus.CANCELLED and time.monotonic() - asked < 3.0, worker.log()
    after = worker.wait(worker.submit("isolated.whoami").id).result
    assert after["child"] != first["child"] and after["forkserver"] == first["forkserver"]


def test_what_an_isolated_task_raises_or_returns_is_recorded_as_a_thread_tasks(
    start_worker: Callable[..., Worker],
) -> None:
    worker = start_worker()
    unpicklable = worker.submit("isolated.raises", kind="unpicklable")
    permanent = worker.submit("isolated.raises", kind="permanent")
    function = worker.submit("isolated.raises", kind="lambda")
    # An exception that cannot cross the pipe keeps its type name and message, and retries
    done = worker.wait(unpicklable.id, lambda j: j.status is not JobStatus.RUNNING and j.error is not None)
    assert done.status is JobStatus.RETRYING
    assert shown(done) == {"type": "NotPicklable", "message": "7: no way back", "retryable": True}
    assert done.error is not None and "no way back" in done.error["traceback"]
    # A non-retryable one fails for good at once
    done = worker.wait(permanent.id)
    assert (done.status, shown(done)) == (JobStatus.FAILED, {"type": "Refused", "message": "never", "retryable": False})
    # A result with no JSON form fails naming the type and where it is
    done = worker.wait(function.id)
    assert done.status is JobStatus.FAILED and shown(done)["type"] == "ResultNotJSON"
    assert shown(done)["message"] == "result is not JSON: function at /f"


def test_max_jobs_per_child_recycles_worker_processes_and_isolated_children(
    start_worker: Callable[..., Worker],
) -> None:
    # Given a worker of one thread whose processes and children run at most three jobs each
    worker = start_worker(threads=1, MAX_JOBS_PER_CHILD="3")
    # When ten isolated jobs run
    jobs = [worker.submit("isolated.whoami") for _ in range(10)]
    done = [worker.wait(job.id) for job in jobs]
    # Then all succeed, once each
    assert [(job.status, job.attempts) for job in done] == [(JobStatus.SUCCEEDED, 1)] * 10, worker.log()
    # And no child, nor worker process (its forkserver), ran more than three of them
    children = [job.result["child"] for job in done]
    processes = [job.result["forkserver"] for job in done]
    assert max(children.count(pid) for pid in children) <= 3 and len(set(children)) >= 4
    assert max(processes.count(pid) for pid in processes) <= 3 and len(set(processes)) >= 4
    # And each replacement is counted, none as a crash
    assert worker.recycled("jobs", "process") >= 3 and worker.recycled("jobs", "isolated") >= 3
    assert "WorkerCrashed" not in worker.log()


def test_a_leaking_isolated_task_gets_its_child_recycled_above_max_memory(start_worker: Callable[..., Worker]) -> None:
    # Given children allowed 300 MiB resident
    worker = start_worker(threads=1, MAX_MEMORY_PER_CHILD_MB="300")
    first = worker.wait(worker.submit("isolated.whoami").id).result
    # When a job leaves 100 MiB behind, its child stays; when another leaves 400 MiB, it goes
    small = worker.wait(worker.submit("isolated.leak", mb=100).id)
    big = worker.wait(worker.submit("isolated.leak", mb=400).id)
    after = worker.wait(worker.submit("isolated.whoami").id).result
    assert small.status is big.status is JobStatus.SUCCEEDED
    assert small.result == big.result == first["child"] != after["child"]
    # And the worker process itself stays (its own memory is under the limit); the recycle is counted
    assert after["forkserver"] == first["forkserver"]
    assert worker.recycled("memory", "isolated") == 1 and worker.recycled("memory", "process") == 0


def test_a_worker_process_over_max_memory_is_replaced_after_its_job_and_not_counted_a_crash(
    start_worker: Callable[..., Worker],
) -> None:
    # Given worker processes allowed 300 MiB resident
    worker = start_worker(threads=1, MAX_MEMORY_PER_CHILD_MB="300")
    before = worker.children()
    # When a thread task leaves 400 MiB behind in its worker process
    leaked = worker.wait(worker.submit("isolated.thread_leak", mb=400).id)
    assert leaked.status is JobStatus.SUCCEEDED and leaked.result in before
    # Then that process is replaced (recycled, counted, no crash) and the new one serves the next job
    deadline = time.monotonic() + FINISH_S
    while not (worker.children() and not worker.children() & before):
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.05)
    after = worker.wait(worker.submit("isolated.thread_leak", mb=1).id)
    assert after.status is JobStatus.SUCCEEDED and after.result not in before
    assert worker.recycled("memory", "process") == 1
    assert "WorkerCrashed" not in worker.log() and "recycled" in worker.log()
