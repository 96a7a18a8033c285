"""The built-in housekeeping schedules, run in-process by the scheduler leader, and job pruning.

They are rows in the schedules table like any other (source ``builtin``,
read-only), so operators see them in ``GET /v1/schedules`` with their last
and next run; only what a tick does differs: it calls a function here
instead of creating a job.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import redis
from sqlalchemy import Engine, and_, delete, exists, or_, select

from shared.broker.queues import drop_dead_letters
from shared.job import FINAL_STATUSES, utcnow
from shared.results import ResultStorage, result_reference
from shared.store.engine import write_transaction
from shared.store.models import jobs, workflows
from shared.store.schedules import Misfire, Schedule, ScheduleSource
from shared.store.tasks import TaskRegistry
from shared.store.workflows import WorkflowStatus

log = logging.getLogger(__name__)

RELAY = "maintenance.relay"
REQUEUE_ORPHANS = "maintenance.requeue_orphans"
PRUNE = "maintenance.prune"
QUEUE_GAUGES = "maintenance.queue_gauges"
RECONCILE = "maintenance.reconcile"
SWEEP = "maintenance.sweep"
#: Built-in schedule id -> interval in seconds (epoch-aligned: prune runs on the hour, UTC).
BUILTIN_INTERVALS_S = {RELAY: 1, REQUEUE_ORPHANS: 2, PRUNE: 3600, QUEUE_GAUGES: 15, RECONCILE: 30, SWEEP: 30}

_FINISHED = sorted(status.value for status in FINAL_STATUSES)


def builtin_schedules() -> list[Schedule]:
    """The housekeeping schedules as rows; ``next_run_at`` is filled in when they are synced."""
    return [
        Schedule(
            id=name,
            task=name,
            args={},
            cron=None,
            interval_s=interval_s,
            misfire=Misfire.COALESCE,
            misfire_grace_s=float(interval_s),
            source=ScheduleSource.BUILTIN,
        )
        for name, interval_s in BUILTIN_INTERVALS_S.items()
    ]


class QueueNames:
    """The queues of the registered catalog, refreshed by ``maintenance.queue_gauges``.

    ``shared.broker.queues.QueueGauges`` reads Redis at scrape time, so the gauges are
    always fresh; this keeps the list of queues it reports current without a
    store query per scrape.
    """

    def __init__(self, registry: TaskRegistry) -> None:
        self.registry = registry
        self.names: list[str] = []

    def refresh(self) -> None:
        self.names = sorted({spec.queue for spec in self.registry.all().values()})

    def __call__(self) -> list[str]:
        return list(self.names)


def _id_bound(moment: datetime) -> str:
    """The smallest UUIDv7 of ``moment``'s millisecond: every job created earlier has a smaller id."""
    ms = int(moment.timestamp() * 1000)
    hexed = f"{ms:012x}"
    return f"{hexed[:8]}-{hexed[8:]}-0000-0000-000000000000"


def prune_finished(
    engine: Engine,
    results: ResultStorage,
    client: redis.Redis,
    *,
    retention_s: float,
    batch: int = 500,
    max_batches: int = 200,
    now: datetime | None = None,
) -> int:
    """Delete finished jobs whose ``finished_at`` is older than the retention, with their result files.

    Works in batches of ``batch`` rows, at most ``max_batches`` per run (the
    next hourly run goes on). Dead letters of pruned failed jobs leave Redis
    too. Steps of a workflow still running are kept.
    """
    cutoff = (now or utcnow()) - timedelta(seconds=retention_s)
    running_workflow = exists().where(
        workflows.c.id == jobs.c.workflow_id, workflows.c.status == WorkflowStatus.RUNNING
    )
    prunable = and_(
        jobs.c.status.in_(_FINISHED),
        # NOTE: ids are UUIDv7 of a time no later than creation, and a job finishes after it is created,
        # so this bound lets the (status, id) index find the candidates without an index on finished_at.
        jobs.c.id < _id_bound(cutoff),
        jobs.c.finished_at < cutoff,
        or_(jobs.c.workflow_id.is_(None), ~running_workflow),
    )
    total = 0
    for _ in range(max_batches):
        with engine.connect() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.queue, jobs.c.result_url, jobs.c.dead)
                .where(prunable)
                .order_by(jobs.c.id)
                .limit(batch)
            ).all()
        if not rows:
            break
        # Files and dead letters first: a crash in between leaves rows the next run deletes, never orphan files.
        # A storage outage stops the run here (``Unavailable``); the next tick takes the same rows again.
        for row in rows:
            if row.result_url is not None:
                results.delete(result_reference(row.id))
        dead: dict[str, list[str]] = {}
        for row in rows:
            if row.dead:
                dead.setdefault(row.queue, []).append(row.id)
        for queue, ids in dead.items():
            drop_dead_letters(client, queue, ids)
        with write_transaction(engine) as conn:
            done = conn.execute(delete(jobs).where(jobs.c.id.in_([row.id for row in rows]), prunable))
        total += done.rowcount
        if len(rows) < batch:
            break
    if total:
        log.info("pruned %d finished job(s) older than %s", total, cutoff.isoformat(timespec="seconds"))
    return total
