"""One worker process: a Dramatiq ``Worker`` with jobrelay's middleware, until SIGTERM.

Started by the supervisor (``services.worker.supervisor``) with the queue
list, thread count and its worker id on the command line.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import TimeLimit

from services.worker.context import current_job
from services.worker.heartbeat import Heartbeat
from services.worker.middleware.status import JobStatusMiddleware
from services.worker.middleware.watchdog import Watchdog
from services.worker.tasks import load_task_modules
from shared.broker import build_broker
from shared.catalog import Catalog, TaskDefinition
from shared.logs import configure_logging
from shared.metrics import disable as disable_metrics
from shared.metrics import start_job_series
from shared.results import build_result_storage
from shared.settings import Settings
from shared.store.engine import create_store_engine
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from shared.store.workflows import WorkflowStore
from shared.waking_broker import WakingRedisBroker
from shared.workflows import WorkflowEngine

log = logging.getLogger(__name__)
#: Messages fetched ahead per worker thread (Dramatiq's default is 2).
PREFETCH_PER_THREAD = 8


def _actor_fn(definition: TaskDefinition) -> Any:
    fn = definition.fn

    def run(**kwargs: Any) -> None:
        # The result goes to the status middleware through the job context, not through
        # Dramatiq (which would warn on every job that there is no Results middleware).
        result = fn(**kwargs)
        context = current_job()
        if context is not None:
            context.result = result

    run.__name__ = fn.__name__
    return run


def declare_actors(broker: RedisBroker, catalog: Catalog) -> None:
    for definition in catalog.definitions():
        spec = definition.spec
        options: dict[str, Any] = {}
        if spec.time_limit_s is not None:
            options["time_limit"] = int(spec.time_limit_s * 1000)
        dramatiq.actor(  # type: ignore[call-overload]
            _actor_fn(definition),
            actor_name=spec.name,
            queue_name=spec.queue,
            priority=spec.priority,
            broker=broker,
            **options,
        )


def build_worker_broker(
    settings: Settings, catalog: Catalog, *, owner: str
) -> tuple[RedisBroker, JobStatusMiddleware, JobStore]:
    engine = create_store_engine(settings.effective_database_url, timeout_s=settings.store_timeout_s)
    store = JobStore(engine)
    redis_url = settings.require_redis_url("the worker")
    workflows = WorkflowEngine(WorkflowStore(engine), store, TaskRegistry(engine), build_broker(redis_url))
    status = JobStatusMiddleware(
        store,
        catalog,
        build_result_storage(settings.effective_result_storage_url),
        owner=owner,
        lease_s=settings.job_lease_s,
        inline_max_bytes=settings.result_inline_max_bytes,
        on_final=lambda job: workflows.advance(job.workflow_id) if job.workflow_id else None,
    )
    broker = build_broker(
        redis_url,
        middleware=[status, Watchdog(store, status), TimeLimit(interval=250)],
        dead_message_ttl_s=settings.job_retention_s,
    )
    broker.broker_id = owner
    status.defer_acks(broker)
    declare_actors(broker, catalog)
    return broker, status, store


def run(settings: Settings, *, queues: list[str], threads: int, owner: str, grace_s: float) -> None:
    configure_logging("worker", settings.log_level, json_lines=settings.log_json)
    catalog = load_task_modules(settings.task_modules)
    broker, status, store = build_worker_broker(settings, catalog, owner=owner)
    for queue in queues:
        broker.declare_queue(queue)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    heartbeat = Heartbeat(
        client=broker.client,
        store=store,
        status=status,
        owner=owner,
        interval_s=settings.worker_heartbeat_s,
        lease_s=settings.job_lease_s,
        liveness_file=Path(settings.data_dir) / "worker-alive",
    )
    heartbeat.beat_once()
    worker = Worker(broker, queues=set(queues), worker_threads=threads, worker_timeout=100)
    # NOTE: Dramatiq's consumer backs off (sleeps) whenever its prefetch is all in flight; with
    # status writes in the loop a message stays in flight longer, so keep more of them fetched.
    worker.queue_prefetch = threads * PREFETCH_PER_THREAD
    if isinstance(broker, WakingRedisBroker):
        status.claim_ahead(broker, threads)
    if settings.worker_metrics:
        start_job_series([(spec.name, spec.queue) for spec in catalog.specs() if spec.queue in queues])
    else:
        disable_metrics()
    broker.emit_after("process_boot")
    worker.start()
    heartbeat.start()
    log.info("worker %s consuming %s with %d thread(s)", owner, ",".join(queues), threads)
    stop.wait()
    log.info("worker %s stopping: finishing in-flight work within %.0fs", owner, grace_s)
    worker.stop(timeout=int(grace_s * 1000))
    status.close()
    heartbeat.stop()
    broker.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jobrelay-worker-process")
    parser.add_argument("--queues", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--grace", type=float, default=30.0)
    args = parser.parse_args(argv)
    run(
        Settings.from_env(),
        queues=[q for q in args.queues.split(",") if q],
        threads=args.threads,
        owner=args.owner,
        grace_s=args.grace,
    )


if __name__ == "__main__":
    main()
