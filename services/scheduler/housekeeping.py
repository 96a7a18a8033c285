"""The built-in housekeeping schedules, run in-process by the scheduler leader.

They are rows in the schedules table like any other (source ``builtin``,
read-only), so operators see them in ``GET /v1/schedules`` with their last
and next run; only what a tick does differs: it calls a function here
instead of creating a job.
"""

from __future__ import annotations

from services.scheduler.pruning import DEFAULT_EVERY_S
from shared.store.schedules import Misfire, Schedule, ScheduleSource
from shared.store.tasks import TaskRegistry

RELAY = "maintenance.relay"
REQUEUE_ORPHANS = "maintenance.requeue_orphans"
PRUNE = "maintenance.prune"
QUEUE_GAUGES = "maintenance.queue_gauges"
RECONCILE = "maintenance.reconcile"
SWEEP = "maintenance.sweep"
#: Built-in schedule id -> interval in seconds (epoch-aligned); prune's is ``PRUNE_EVERY``.
BUILTIN_INTERVALS_S = {
    RELAY: 1,
    REQUEUE_ORPHANS: 2,
    PRUNE: DEFAULT_EVERY_S,
    QUEUE_GAUGES: 15,
    RECONCILE: 30,
    SWEEP: 30,
}


def builtin_schedules(*, prune_every_s: int = DEFAULT_EVERY_S) -> list[Schedule]:
    """The housekeeping schedules as rows; ``next_run_at`` is filled in when they are synced."""
    intervals_s = {**BUILTIN_INTERVALS_S, PRUNE: prune_every_s}
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
        for name, interval_s in intervals_s.items()
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
