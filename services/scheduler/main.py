"""``jobrelay scheduler``: sync the schedules at boot, then fire them while this replica holds the lease.

Boot: migrate, sync the built-in housekeeping schedules and ``schedules.toml``
into the store (a bad entry stops the process with the file, line and
reason). Then a loop takes or renews the leader lease; the leader keeps
APScheduler loaded with the enabled schedules, re-reading the table every
second, and a standby only polls the lease, often enough to take over within
its TTL.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import REGISTRY, start_http_server

from services.scheduler import housekeeping
from services.scheduler.dead_letter_layout import OldLayout
from services.scheduler.housekeeping import QueueNames, builtin_schedules
from services.scheduler.leader import LeaderLease
from services.scheduler.metrics import (
    LeaderOnly,
    jobs_pruned_total,
    jobs_relayed_total,
    jobs_republished_total,
    scheduler_is_leader,
)
from services.scheduler.pruning import PruneLimits, Pruner
from services.scheduler.push import PushRelay
from services.scheduler.reconcile import LostMessages
from services.scheduler.relay import OutboxRelay
from services.scheduler.runner import Runner
from services.scheduler.schedule_file import sync_file
from services.scheduler.sweeper import StrandedRuns
from shared.broker.orphans import requeue_orphans
from shared.broker.pausing import sync_pauses
from shared.broker.publishing import build_broker
from shared.broker.queues import QueueGauges
from shared.ids import new_id
from shared.job import utcnow
from shared.logs import configure_logging
from shared.results import build_result_storage
from shared.schedules.triggers import build_trigger, first_tick_at_or_after
from shared.settings import Settings
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from shared.store.pauses import QueuePauses
from shared.store.pushes import PushStore
from shared.store.schedules import ScheduleSource, ScheduleStore
from shared.store.tasks import TaskRegistry
from shared.store.workflows import WorkflowStore
from shared.submission.submitter import Submitter
from shared.tracing import configure_tracing
from shared.workflows import WorkflowEngine

log = logging.getLogger(__name__)

#: How long boot waits for the workers to register the tasks schedules.toml names (they may start together).
TASK_WAIT_S = 30.0
#: How often the leader re-reads the schedules table; API changes apply within this plus a wake-up.
SYNC_EVERY_S = 1.0


def sync_builtins(schedules: ScheduleStore, settings: Settings) -> None:
    now = utcnow()
    wanted = builtin_schedules(prune_every_s=settings.prune_every_s)
    for schedule in wanted:
        schedule.next_run_at = first_tick_at_or_after(build_trigger(None, schedule.interval_s, "UTC"), now)
    schedules.sync(ScheduleSource.BUILTIN, wanted)


def run(settings: Settings) -> int:
    configure_logging("scheduler", settings.log_level, json_lines=settings.log_json)
    configure_tracing("scheduler")
    engine = create_store_engine(settings.effective_database_url, timeout_s=settings.store_timeout_s)
    migrate(engine)
    store = JobStore(engine)
    schedules = ScheduleStore(engine)
    registry = TaskRegistry(engine)
    broker = build_broker(
        settings.require_redis_url("the scheduler"),
        dead_message_ttl_s=settings.job_retention_s,
        fair_sharing=settings.fair_sharing,
    )
    sync_builtins(schedules, settings)
    sync_file(schedules, registry, settings.schedules_file, task_wait_s=TASK_WAIT_S)

    identity = f"{socket.gethostname()}-{new_id()[-12:]}"
    lease = LeaderLease(broker.client, identity, ttl_s=settings.leader_lease_s)
    queue_names = QueueNames(registry)
    queue_names.refresh()
    REGISTRY.register(LeaderOnly(QueueGauges(broker.client, store, queue_names), lease))
    host, _, port = settings.scheduler_metrics_bind.rpartition(":")
    start_http_server(int(port), addr=host)

    results = build_result_storage(settings.effective_result_storage_url)
    lost_messages = LostMessages(store, broker)
    old_dead_letters = OldLayout(broker.client, store, queue_names)

    def reconcile() -> None:
        jobs_republished_total.inc(lost_messages.run())
        # And the dead letters an older version left keyed by Redis message id, moved under their job ids.
        old_dead_letters.run()

    stranded_runs = StrandedRuns(store, registry, broker, dead_after_s=settings.worker_dead_after_s)
    workflow_engine = WorkflowEngine(WorkflowStore(engine), store, registry, broker)
    pauses = QueuePauses(engine)
    outbox_relay = OutboxRelay(store, broker, grace_s=settings.relay_grace_s)
    stop = threading.Event()
    pruner = Pruner(
        engine,
        results,
        broker.client,
        retention_s=settings.job_retention_s,
        limits=PruneLimits(settings.prune_every_s, settings.prune_batch_rows, settings.prune_pause_s),
        # NOTE: a long backlog's run ends within one batch of a lost lease or a shutdown.
        keep_going=lambda: lease.is_leader and not stop.is_set(),
    )
    submitter = Submitter(store, registry, broker)
    push_relay = PushRelay(PushStore(engine), registry, submitter)

    def relay() -> None:
        # The outbox relay, then the push relay (which submits the callback deliveries that fell due).
        jobs_relayed_total.inc(outbox_relay.run())
        push_relay.run()

    work: dict[str, Callable[[], object]] = {
        housekeeping.RELAY: relay,
        # What crashes leave behind: messages of dead workers, and workflows whose worker died
        # between recording a step and moving the workflow on; and the Redis mirror of paused
        # queues put right from the store (a Redis that lost its data, an API that died mid-pause).
        housekeeping.REQUEUE_ORPHANS: lambda: (
            requeue_orphans(broker.client, store, dead_after_s=settings.worker_dead_after_s),
            workflow_engine.advance_stale(),
            sync_pauses(broker.client, pauses.paused()),
        ),
        housekeeping.PRUNE: lambda: jobs_pruned_total.inc(pruner.run()),
        housekeeping.QUEUE_GAUGES: queue_names.refresh,
        housekeeping.RECONCILE: reconcile,
        housekeeping.SWEEP: stranded_runs.run,
    }
    scheduler = BackgroundScheduler(timezone="UTC", executors={"default": ThreadPoolExecutor(20)})
    runner = Runner(
        scheduler=scheduler,
        schedules=schedules,
        submitter=submitter,
        lease=lease,
        housekeeping=work,
    )
    scheduler.start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("scheduler %s started; lease TTL %.1fs", identity, settings.leader_lease_s)
    _lead_while_running(lease, runner, stop, renew_every_s=settings.leader_lease_s / 3)
    runner.unload_all()
    scheduler.shutdown(wait=True)
    # NOTE: the outbox entries of the last fires are deleted in the background; written now, the next
    # leader's relay does not send those jobs again.
    submitter.sent.flush()
    # NOTE: released only after in-flight fires finished, so the next leader starts from their records.
    lease.release()
    scheduler_is_leader.set(0)
    log.info("scheduler %s stopped", identity)
    return 0


def _lead_while_running(lease: LeaderLease, runner: Runner, stop: threading.Event, *, renew_every_s: float) -> None:
    """Take, renew or wait for the lease until ``stop``; while leading, re-read the schedules every second."""
    renew_at = sync_at = 0.0
    while not stop.is_set():
        now = time.monotonic()
        if not lease.is_leader or now >= renew_at:
            was_leader = lease.is_leader
            leading = lease.refresh()
            scheduler_is_leader.set(1 if leading else 0)
            renew_at = now + renew_every_s
            if was_leader and not leading:
                runner.unload_all()
            elif leading and not was_leader:
                sync_at = 0.0
        if lease.is_leader and now >= sync_at:
            sync_at = now + SYNC_EVERY_S
            try:
                runner.sync()
            except Exception:
                log.exception("could not read the schedules; trying again in %.0fs", SYNC_EVERY_S)
        # NOTE: a standby polls at least twice a second, so it takes over well within one lease TTL.
        stop.wait(0.2 if lease.is_leader else min(0.5, renew_every_s))
