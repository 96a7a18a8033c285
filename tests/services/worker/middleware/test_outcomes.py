"""Claims, Results and Outcomes on the store's twin and Dramatiq's StubBroker, run by a real Dramatiq Worker.

The middleware are wired as ``build_worker_broker`` wires them, without Redis or SQL: each
delivery is claimed in a ``MemoryJobStore``, the task runs, and its outcome is committed
through a ``StatusWriter`` before the stub broker sees the message acked, retried or
dead-lettered. No acker, so a success is committed on the worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import TimeLimit
from prometheus_client import REGISTRY

from services.worker.middleware.claims import Claims
from services.worker.middleware.outcomes import Outcomes, error_body, format_trace
from services.worker.middleware.results import Results
from services.worker.middleware.workflows import WorkflowAdvance
from services.worker.process import declare_actors
from services.worker.status_writer import StatusWriter
from services.worker.tasks import load_task_modules
from shared.broker.publishing import publish
from shared.job import Job, JobStatus
from shared.results import DirectoryStorage
from shared.store.memory import MemoryJobStore
from tests.shared.store.test_jobs import make_job

OWNER = "worker-1"
#: The longest a test waits for the worker to handle its messages, in milliseconds.
JOIN_TIMEOUT_MS = 20_000


@dataclass
class StubWorker:
    broker: StubBroker
    store: MemoryJobStore

    def run(self, job: Job) -> Job:
        """Insert ``job``'s row, publish its message, and return the row once the worker is done with it."""
        self.store.insert([job])
        return self.deliver(job.id)

    def deliver(self, job_id: str) -> Job:
        """Publish the message of the stored job ``job_id``; its row once every message is handled."""
        publish(self.broker, [self.store.get(job_id)])
        self.broker.join("default", timeout=JOIN_TIMEOUT_MS, fail_fast=False)
        return self.store.get(job_id)


@pytest.fixture
def stub_worker(tmp_path: Path) -> Iterator[StubWorker]:
    store = MemoryJobStore()
    results = DirectoryStorage(tmp_path / "results")
    writes = StatusWriter(store)
    claims = Claims(store, writes, results, owner=OWNER, lease_s=30)
    workflows = WorkflowAdvance(claims, None)
    catalog = load_task_modules()
    outcomes = Outcomes(store, writes, catalog, claims=claims, workflows=workflows, acker=None, owner=OWNER)
    # NOTE: the order of build_worker_broker, less what needs Redis (metrics and the watchdog add nothing here).
    middleware = [claims, workflows, outcomes, Results(claims, results, inline_max_bytes=1024)]
    broker = StubBroker(middleware=[*middleware, TimeLimit(interval=250)])
    declare_actors(broker, catalog)  # type: ignore[arg-type]
    worker = Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    yield StubWorker(broker, store)
    worker.stop()
    outcomes.close()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_task_that_returns_is_recorded_succeeded_with_its_result(stub_worker: StubWorker) -> None:
    row = stub_worker.run(make_job(task="diagnostics.echo", args={"message": "hi"}, max_retries=0))
    assert (row.status, row.result, row.attempts) == (JobStatus.SUCCEEDED, "hi", 1)
    assert row.lease_owner is None and row.finished_at is not None
    assert stub_worker.broker.dead_letters == []


def test_a_failed_attempt_is_recorded_retrying_and_retried_from_the_delay_queue(stub_worker: StubWorker) -> None:
    # Given a task that fails on its first attempt and has retries left
    job = make_job(task="diagnostics.fail", args={"succeed_on_attempt": 2}, max_retries=3)
    # When it runs: the first attempt's row says retrying, with a new message on the delay queue
    row = stub_worker.run(job)
    # Then the second attempt, run from that message, succeeds
    assert (row.status, row.attempts, row.result) == (JobStatus.SUCCEEDED, 2, {"succeeded_on_attempt": 2})
    assert row.error is None and stub_worker.broker.dead_letters == []


def test_a_task_out_of_retries_fails_for_good_and_its_message_is_dead_lettered(stub_worker: StubWorker) -> None:
    row = stub_worker.run(make_job(task="diagnostics.fail", args={"message": "no"}, max_retries=0))
    assert (row.status, row.attempts, row.dead) == (JobStatus.FAILED, 1, True)
    # (the error is of a retryable type: the job has no retries left, not an error that refuses them)
    assert row.error is not None
    assert (row.error["type"], row.error["message"], row.error["retryable"]) == (
        "DiagnosticFailure",
        "no (attempt 1)",
        True,
    )
    assert [message.message_id for message in stub_worker.broker.dead_letters] == [row.id]


def test_a_delivery_of_a_job_another_worker_holds_is_skipped(stub_worker: StubWorker) -> None:
    # Given a job another worker claimed (a message delivered twice)
    job = make_job(task="diagnostics.echo", args={"message": "hi"}, max_retries=0)
    stub_worker.store.insert([job])
    stub_worker.store.claim(job.id, owner="worker-2", lease_s=30)
    skipped = sample("jobrelay_jobs_duplicates_skipped_total", task="diagnostics.echo", queue="default")
    # When this worker gets its message
    row = stub_worker.deliver(job.id)
    # Then it does not run it: the row is the other worker's, as it was, and the skip is counted
    assert (row.status, row.lease_owner, row.attempts, row.result) == (JobStatus.RUNNING, "worker-2", 1, None)
    assert sample("jobrelay_jobs_duplicates_skipped_total", task="diagnostics.echo", queue="default") == skipped + 1


def test_a_job_cancelled_before_its_delivery_is_not_run(stub_worker: StubWorker) -> None:
    job = make_job(task="diagnostics.echo", args={"message": "hi"}, max_retries=0)
    stub_worker.store.insert([job])
    stub_worker.store.cancel(job.id)
    row = stub_worker.deliver(job.id)
    assert (row.status, row.attempts, row.result) == (JobStatus.CANCELLED, 0, None)
    assert stub_worker.broker.dead_letters == []


def _nested_failure() -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        raise ValueError("could not read the setting") from exc


def test_a_failure_trace_keeps_every_frame_and_cause_without_the_column_marks() -> None:
    # Given an exception raised from another
    try:
        _nested_failure()
    except ValueError as exc:
        failure = exc
    # When its trace is formatted for the stored error and the log line
    trace = format_trace(failure)
    body = error_body(failure, retryable=False, trace=trace)
    # Then both exceptions, every frame with its source line, and the chain are there; no ^^^^ lines
    assert "KeyError: 'missing'" in trace and "ValueError: could not read the setting" in trace
    assert "direct cause of the following exception" in trace
    assert trace.count("in _nested_failure") == 2 and '{}["missing"]' in trace
    assert "^" not in trace
    assert body["traceback"] == trace and body["type"] == "ValueError" and body["retryable"] is False
