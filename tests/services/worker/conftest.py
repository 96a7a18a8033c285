"""An in-process worker on a real Redis and a real store, and a way to submit and await jobs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker

from services.worker.ack_sets import AckSets
from services.worker.consumer import ClaimsAhead, DeferredAcks, WorkerBroker
from services.worker.middleware.claims import Claims
from services.worker.process import build_worker_broker
from shared.broker.publishing import NAMESPACE, broker_options, build_broker, redis_client
from shared.catalog import Catalog
from shared.errors import FieldError
from shared.job import Job
from shared.settings import Settings
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from shared.submission.submitter import Submitter
from shared.submission.validation import Submission, build_job


@dataclass
class Harness:
    broker: RedisBroker
    worker: Worker
    claims: Claims
    store: JobStore
    submitter: Submitter

    def submit(self, body: dict) -> Job:
        errors: list[FieldError] = []
        job = build_job(body, "", self.submitter.registry, Submission(request_id="req-1"), errors)
        assert job is not None, errors
        [(stored, _)] = self.submitter.submit([job])
        return stored

    def wait(self, job_id: str, until: Callable[[Job], bool] | None = None, timeout_s: float = 10.0) -> Job:
        until = until or (lambda job: job.status.is_final)
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.store.get(job_id)
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} stuck in {job.status} after {timeout_s}s")
            time.sleep(0.02)


@pytest.fixture
def worker_settings(redis_url: str, tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        data_dir=tmp_path,
        result_inline_max_bytes=1024,
    )


@contextmanager
def running_harness(
    settings: Settings,
    catalog: Catalog,
    store: JobStore,
    registry: TaskRegistry,
    client: redis.Redis | None = None,
    threads: int = 2,
) -> Iterator[Harness]:
    wiring = build_worker_broker(settings, catalog, owner="test-worker", client=client)
    broker = wiring.broker
    for queue in catalog.queues():
        broker.declare_queue(queue)
    broker.emit_after("process_boot")
    worker = Worker(broker, worker_threads=threads, worker_timeout=50)
    # As in a worker process: consumers claim jobs before handing out their messages.
    wiring.claims.claim_ahead(threads)
    worker.start()
    try:
        submitter = Submitter(store, registry, build_broker(settings.require_redis_url("tests")), 1 << 20)
        yield Harness(broker=broker, worker=worker, claims=wiring.claims, store=wiring.store, submitter=submitter)
    finally:
        worker.stop(timeout=5000)
        wiring.close()


@pytest.fixture
def harness(worker_settings: Settings, catalog: Catalog, store: JobStore, registry: TaskRegistry) -> Iterator[Harness]:
    with running_harness(worker_settings, catalog, store, registry) as running:
        yield running


def worker_broker(
    redis_url: str,
    owner: str,
    *,
    claims: ClaimsAhead | None = None,
    deferred_acks: DeferredAcks | None = None,
    client: redis.Redis | None = None,
) -> WorkerBroker:
    """A worker's broker with no middleware, its consumers' collaborators given (or none)."""
    client = client or redis_client(redis_url)
    return WorkerBroker(
        ack_sets=AckSets(client, namespace=NAMESPACE, owner=owner),
        claims=claims,
        deferred_acks=deferred_acks,
        **broker_options(client, middleware=[], heartbeat_timeout_s=60.0, dead_message_ttl_s=86400.0),
    )
