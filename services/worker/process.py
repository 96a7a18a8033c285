"""One worker process: a Dramatiq ``Worker`` with jobrelay's middleware, until SIGTERM.

Started by the supervisor (``services.worker.supervisor``) with the queue
list, thread count and its worker id on the command line.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import TimeLimit
from sqlalchemy import Engine

from services.worker.ack_sets import AckSets
from services.worker.acker import Acker
from services.worker.callbacks import Callbacks
from services.worker.consumer import WorkerBroker
from services.worker.consumer_watch import CONSUMERS_DOWN_PREFIX, ConsumerWatch
from services.worker.context import current_job, use_settings
from services.worker.fault_report import enable as enable_fault_report
from services.worker.fault_report import fault_report_path
from services.worker.heartbeat import Heartbeat
from services.worker.held_jobs import HeldJobs, held_jobs_path
from services.worker.isolation.pool import IsolatedTasks
from services.worker.lifespans import LIFESPAN_FAILED_EXIT_CODE, LifespanFailed, WorkerLifespans
from services.worker.limits import catalog_limits
from services.worker.middleware.claims import Claims
from services.worker.middleware.event_loop import AsyncTasks
from services.worker.middleware.flow import Flow
from services.worker.middleware.metrics import JobMetrics
from services.worker.middleware.outcomes import Outcomes
from services.worker.middleware.results import Results
from services.worker.middleware.tracing import TraceMessages, TraceRun
from services.worker.middleware.watchdog import Watchdog
from services.worker.middleware.workflows import WorkflowAdvance
from services.worker.recycling import RECYCLED_EXIT_CODE, ProcessRecycling, RecycleLimits
from services.worker.status_writer import StatusWriter
from services.worker.tasks import load_task_modules
from shared import tracing
from shared.broker.pausing import sync_pauses
from shared.broker.publishing import NAMESPACE, broker_options, build_broker, publish, redis_client
from shared.broker.workers import describe_worker
from shared.catalog import Catalog, TaskDefinition
from shared.lifespans import default_lifespans
from shared.logs import configure_logging
from shared.metric_files import reserve_file_space
from shared.metrics import disable as disable_metrics
from shared.metrics import start_deferred_series, start_job_series
from shared.results import build_result_storage
from shared.settings import Settings
from shared.store.engine import STORE_DOWN, create_store_engine
from shared.store.jobs import JobStore
from shared.store.pauses import QueuePauses
from shared.store.tasks import TaskRegistry
from shared.store.workflows import WorkflowStore
from shared.workflows import WorkflowEngine

log = logging.getLogger(__name__)
#: Messages fetched ahead per worker thread (Dramatiq's default is 2).
PREFETCH_PER_THREAD = 8


def _actor_fn(definition: TaskDefinition, isolated: IsolatedTasks | None) -> Any:
    fn = definition.fn
    if inspect.iscoroutinefunction(fn):
        return _async_actor_fn(fn)
    if definition.spec.isolation == "process" and isolated is not None:
        return _isolated_actor_fn(definition, isolated)

    def run(**kwargs: Any) -> None:
        # The result goes to the status middleware through the job context, not through
        # Dramatiq (which would warn on every job that there is no Results middleware).
        context = current_job()
        try:
            result = fn(**kwargs)
        finally:
            if context is not None:
                context.returned = True
        if context is not None:
            context.result = result

    run.__name__ = fn.__name__
    return run


def _async_actor_fn(fn: Callable[..., Awaitable[Any]]) -> Any:
    """An ``async def`` task as a coroutine actor, which Dramatiq runs through ``AsyncTasks``.

    The coroutine runs on the process's event loop in a copy of the worker thread's context,
    so ``current_job()`` here is the job ``Claims`` entered (``middleware/event_loop.py``).
    """

    async def run(**kwargs: Any) -> None:
        context = current_job()
        try:
            result = await fn(**kwargs)
        finally:
            if context is not None:
                context.returned = True
        if context is not None:
            context.result = result

    run.__name__ = fn.__name__
    return run


def _isolated_actor_fn(definition: TaskDefinition, isolated: IsolatedTasks) -> Any:
    """An ``isolation="process"`` task: its thread hands the job to its child and waits (``isolation/pool.py``)."""

    def run(**kwargs: Any) -> None:
        context = current_job()
        if context is None:
            raise RuntimeError(f"{definition.spec.name} runs in an isolation child only inside a claimed job")
        try:
            result, file_type = isolated.run(context, kwargs)
        finally:
            context.returned = True
        context.result, context.result_file_type = result, file_type

    run.__name__ = definition.fn.__name__
    return run


def declare_actors(broker: RedisBroker, catalog: Catalog, isolated: IsolatedTasks | None = None) -> None:
    """One Dramatiq actor per task; ``isolated`` runs the ``isolation="process"`` ones (None: in their thread)."""
    for definition in catalog.definitions():
        spec = definition.spec
        options: dict[str, Any] = {}
        if spec.time_limit_s is not None:
            options["time_limit"] = int(spec.time_limit_s * 1000)
        dramatiq.actor(  # type: ignore[call-overload]
            _actor_fn(definition, isolated),
            actor_name=spec.name,
            queue_name=spec.queue,
            # NOTE: no Dramatiq actor priority: Dramatiq orders a worker's local queue by it, lowest
            # first (the reverse of ours) and per task, not per job. Priority acts on the fetch
            # (shared/broker/bands.py), and the local queue keeps the fetch's order.
            broker=broker,
            **options,
        )


@dataclass
class WorkerWiring:
    """A worker process's broker and the middleware other parts of it talk to."""

    broker: WorkerBroker
    claims: Claims
    outcomes: Outcomes
    store: JobStore
    flow: Flow
    lifespans: WorkerLifespans
    #: Set to stop the process: by SIGTERM, or by ``recycling`` at its limit.
    stop: threading.Event
    recycling: ProcessRecycling
    #: The status writer's store: ``store`` itself, or one with an engine of its own (``_status_writer_store``).
    writer_store: JobStore

    def close(self) -> None:
        """Commit and ack what is still pending, then let go of Redis (after the worker stopped)."""
        self.outcomes.close()
        if self.writer_store.engine is not self.store.engine:
            # The status writer's own engine (PostgreSQL, ``_status_writer_store``): its connection ends here.
            self.writer_store.engine.dispose()
        self.flow.close()
        self.broker.close()


def _status_writer_store(settings: Settings, engine: Engine) -> JobStore:
    """The status writer's store: on PostgreSQL an engine of its own, without the ping at each checkout.

    NOTE: the writer commits a batch every few milliseconds, and the pool's ping was one round trip
    of its five. A connection that died fails the batch's commit instead, which the writer retries
    (finishes) or its callers do (claims), on a fresh connection: SQLAlchemy drops a disconnected one.
    """
    if engine.dialect.name != "postgresql":
        return JobStore(engine)
    own = create_store_engine(
        settings.effective_database_url, pool_size=1, timeout_s=settings.store_timeout_s, pre_ping=False
    )
    return JobStore(own)


def build_worker_broker(
    settings: Settings,
    catalog: Catalog,
    *,
    owner: str,
    client: redis.Redis | None = None,
    lifespans: list[Callable[..., Any]] | None = None,
) -> WorkerWiring:
    """The path of a message through a worker, wired in the order it is travelled.

    The consumer (``consumer.py``) fetches and asks ``Claims`` to claim ahead; the
    middleware run in list order before the task and in reverse order after it:
    claim, time the attempt, store the result, record the outcome, advance the
    workflow; the acker acks a success once its commit is done. ``client``: the Redis client
    of the consumers and acks (tests give one that fails chosen commands); ``lifespans``: the
    worker lifespans to enter (default: those the task modules registered).
    """
    engine = create_store_engine(settings.effective_database_url, timeout_s=settings.store_timeout_s)
    store = JobStore(engine)
    redis_url = settings.require_redis_url("the worker")
    client = client or redis_client(redis_url)
    publisher = build_broker(redis_url, fair_sharing=settings.fair_sharing)
    workflow_engine = WorkflowEngine(WorkflowStore(engine), store, TaskRegistry(engine), publisher)
    results = build_result_storage(settings.effective_result_storage_url)
    callback_broker = build_broker(redis_url, fair_sharing=settings.fair_sharing)
    callbacks = Callbacks(
        catalog,
        TaskRegistry(engine),
        publish=lambda jobs: publish(callback_broker, jobs),
        outbox_sent=store.outbox_sent,
    )
    try:
        callbacks.warn_unknown()
    except Exception as exc:  # NOTE: a warning only; the registry may not be reachable yet.
        log.warning("could not check the callback tasks: %s", exc)
    writer_store = _status_writer_store(settings, engine)
    writes = StatusWriter(writer_store, callbacks=callbacks)
    # What the supervisor reads: the attempts' limits while this process lives (``limits.py``),
    # which attempts count if it dies (``held_jobs.py``).
    held = HeldJobs(held_jobs_path(Path(settings.data_dir), owner), limits_of=catalog_limits(catalog))
    claims = Claims(store, writes, results, owner=owner, lease_s=settings.job_lease_s, held=held)
    workflows = WorkflowAdvance(claims, workflow_engine.advance)
    ack_sets = AckSets(client, namespace=NAMESPACE, owner=owner)
    acker = Acker(ack_sets, on_final=workflows.ended)
    outcomes = Outcomes(store, writes, catalog, claims=claims, workflows=workflows, acker=acker, owner=owner)
    # NOTE: before the claim, so a job over a concurrency or rate limit is neither claimed nor
    # charged an attempt; its after hooks run last, giving the slot back once the outcome is recorded.
    flow = Flow(
        catalog,
        client=client,
        store=store,
        claims_ahead=claims.reservations,
        owner=owner,
        namespace=NAMESPACE,
        slot_ttl_s=settings.job_lease_s,
    )
    limits = RecycleLimits.from_settings(settings)
    stop = threading.Event()
    recycling = ProcessRecycling(claims, limits, stop=stop)
    isolated = IsolatedTasks(settings, limits, prestart=any(spec.isolation == "process" for spec in catalog.specs()))
    middleware = [
        flow,
        claims,
        recycling,
        workflows,
        outcomes,
        Results(claims, results, inline_max_bytes=settings.result_inline_max_bytes),
        # NOTE: after the others, so its after hook runs first: the duration is the task's run time,
        # without the result upload or an outage waited out in the outcome hooks.
        JobMetrics(claims),
        Watchdog(store, claims, outcomes, held=held),
        TimeLimit(interval=250),
        AsyncTasks(),
        isolated,
    ]
    # NOTE: after AsyncTasks: its boot hook starts the event loop the async lifespans enter on, and
    # (after hooks run in reverse) the lifespans exit before that loop stops.
    worker_lifespans = WorkerLifespans(
        default_lifespans.lifespans() if lifespans is None else lifespans,
        startup_timeout_s=settings.worker_startup_timeout_s,
    )
    middleware.append(worker_lifespans)
    if tracing.enabled():
        # NOTE: first and last: the consumer span encloses every hook, the run span only the task.
        middleware = [TraceMessages(), *middleware, TraceRun(claims)]
    broker = WorkerBroker(
        ack_sets=ack_sets,
        claims=claims.reservations,
        deferred_acks=acker,
        **broker_options(
            client,
            middleware=middleware,
            heartbeat_timeout_s=60.0,
            dead_message_ttl_s=settings.job_retention_s,
            fair_sharing=settings.fair_sharing,
        ),
    )
    declare_actors(broker, catalog, isolated)
    return WorkerWiring(broker, claims, outcomes, store, flow, worker_lifespans, stop, recycling, writer_store)


def run(settings: Settings, *, queues: list[str], threads: int, owner: str, grace_s: float) -> int:
    """Serve until SIGTERM (exit code 0) or until recycled (``RECYCLED_EXIT_CODE``)."""
    configure_logging("worker", settings.log_level, json_lines=settings.log_json)
    tracing.configure_tracing("worker")
    # Before the first metric is written: a full disk must not kill the process (SIGBUS).
    reserve_file_space()
    # The built-in tasks read SMTP_URL, WEBHOOK_SIGNING_SECRET, ... from these, never from the environment.
    use_settings(settings)
    catalog = load_task_modules(settings.task_modules)
    # Kept open to the end (never closed: faulthandler writes to its descriptor): a fatal signal's
    # report names the task that caused it (``crashes.py``).
    _fault_report = enable_fault_report(fault_report_path(Path(settings.data_dir), owner))
    wiring = build_worker_broker(settings, catalog, owner=owner)
    broker, store = wiring.broker, wiring.store
    for queue in queues:
        broker.declare_queue(queue)
    stop = wiring.stop
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker = Worker(broker, queues=set(queues), worker_threads=threads, worker_timeout=100)
    # NOTE: Dramatiq's consumer backs off (sleeps) whenever its prefetch is all in flight; with
    # status writes in the loop a message stays in flight longer, so keep more of them fetched.
    worker.queue_prefetch = threads * PREFETCH_PER_THREAD
    heartbeat = Heartbeat(
        client=broker.client,
        store=store,
        claims=wiring.claims,
        flow=wiring.flow,
        owner=owner,
        interval_s=settings.worker_heartbeat_s,
        lease_s=settings.job_lease_s,
        liveness_file=Path(settings.data_dir) / "worker-alive",
        consumers=ConsumerWatch(worker),
        down_file=Path(settings.data_dir) / f"{CONSUMERS_DOWN_PREFIX}{os.getpid()}",
    )
    heartbeat.beat_once()
    try:
        describe_worker(broker.client, owner, queues=queues, processes=settings.worker_processes, threads=threads)
    except redis.RedisError as exc:
        # NOTE: only the console reads it; a worker runs its jobs without.
        log.warning("could not describe this worker in Redis: %s", exc)
    wiring.claims.claim_ahead(threads)
    if settings.worker_metrics:
        specs = [spec for spec in catalog.specs() if spec.queue in queues]
        start_job_series([(spec.name, spec.queue) for spec in specs])
        start_deferred_series(wiring.flow.series(specs))
    else:
        disable_metrics()
    try:
        # NOTE: before the first fetch: a Redis that lost the pause mirror must not let a paused queue run
        # until the scheduler restores it.
        sync_pauses(broker.client, QueuePauses(store.engine).paused())
    except (redis.RedisError, *STORE_DOWN) as exc:
        log.warning("could not restore the paused queues from the store: %s", exc)
    broker.emit_after("process_boot")
    try:
        worker.start()
    except LifespanFailed as exc:
        # NOTE: no restart can mend this: the supervisor stops on this exit code, not in a crash loop.
        log.error("worker %s cannot start: %s", owner, exc.error.detail)
        logging.shutdown()
        os._exit(LIFESPAN_FAILED_EXIT_CODE)
    wiring.flow.start()
    heartbeat.start()
    log.info("worker %s consuming %s with %d thread(s)", owner, ",".join(queues), threads)
    stop.wait()
    log.info("worker %s stopping: finishing in-flight work within %.0fs", owner, grace_s)
    wiring.lifespans.exit_deadline = time.monotonic() + grace_s
    worker.stop(timeout=int(grace_s * 1000))
    wiring.outcomes.close()
    wiring.flow.close()
    heartbeat.stop()
    broker.close()
    return 0 if wiring.recycling.reason is None else RECYCLED_EXIT_CODE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jobrelay-worker-process")
    parser.add_argument("--queues", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--grace", type=float, default=30.0)
    args = parser.parse_args(argv)
    code = run(
        Settings.from_env(),
        queues=[q for q in args.queues.split(",") if q],
        threads=args.threads,
        owner=args.owner,
        grace_s=args.grace,
    )
    logging.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
