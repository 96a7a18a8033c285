"""Claims on the store's twin and Dramatiq's StubBroker: a claim that fails in an unexpected way never lets
the task run unclaimed; its delivery is dead-lettered and its job failed."""

from __future__ import annotations

from pathlib import Path

import dramatiq
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from services.worker.middleware.claims import Claims
from services.worker.middleware.outcomes import Outcomes
from services.worker.middleware.workflows import WorkflowAdvance
from services.worker.status_writer import StatusWriter
from shared.broker.publishing import publish
from shared.catalog import Catalog
from shared.job import JobStatus
from shared.results import DirectoryStorage
from shared.store.attempts import Claim, ClaimRequest
from shared.store.memory import MemoryJobStore
from tests.services.worker.middleware.test_outcomes import JOIN_TIMEOUT_MS, OWNER
from tests.shared.store.test_jobs import make_job


class RefusingWriter(StatusWriter):
    """A status writer whose claims fail with an error that is not a store outage."""

    def claim(self, request: ClaimRequest) -> Claim:
        raise RuntimeError("the claim went wrong")


def test_a_claim_that_raises_dead_letters_the_delivery_and_never_runs_the_task(tmp_path: Path) -> None:
    # Given a worker whose claims fail with an unexpected error
    store = MemoryJobStore()
    writes = RefusingWriter(store)
    claims = Claims(store, writes, DirectoryStorage(tmp_path), owner=OWNER, lease_s=30)
    workflows = WorkflowAdvance(claims, None)
    outcomes = Outcomes(store, writes, Catalog(), claims=claims, workflows=workflows, acker=None, owner=OWNER)
    broker = StubBroker(middleware=[claims, workflows, outcomes])
    ran: list[str] = []
    dramatiq.actor(lambda **kwargs: ran.append("ran"), actor_name="diagnostics.echo", broker=broker)
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        # When a job's message arrives
        job = make_job()
        store.insert([job])
        publish(broker, [store.get(job.id)])
        broker.join("default", timeout=JOIN_TIMEOUT_MS, fail_fast=False)
    finally:
        worker.stop()
        outcomes.close()
    # Then the task never ran, the message went to the dead letters, and the job failed saying why
    assert ran == []
    assert len(broker.dead_letters) == 1
    failed = store.get(job.id)
    assert failed.status is JobStatus.FAILED and failed.error
    assert failed.error["type"] == "RuntimeError" and failed.error["message"] == "the claim went wrong"
