"""``maintenance.prune``: finished jobs past ``JOB_RETENTION`` leave the store in bounded batches, continuously.

The leader runs a prune every ``PRUNE_EVERY``; a run deletes batches of
``PRUNE_BATCH`` rows, pausing ``PRUNE_PAUSE_S`` between them, until nothing
is left to delete or most of the interval has passed (then the next run goes
on from where it stopped). Each batch is two short statements, so writers
(the API's submits, the workers' finishes) wait for at most one batch, and
the pause between batches is theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from sqlalchemy import ColumnElement, Engine, and_, delete, exists, func, or_, select

from shared.broker.queues import drop_dead_letters
from shared.clock import Clock, SystemClock
from shared.ids import id_lower_bound
from shared.job import FINAL_STATUSES
from shared.results import ResultStorage, result_reference
from shared.store.engine import write_transaction
from shared.store.models import job_attempts, jobs, workflows
from shared.store.workflows import WorkflowStatus

log = logging.getLogger(__name__)

#: The defaults of ``PRUNE_EVERY``, ``PRUNE_BATCH`` and ``PRUNE_PAUSE_S``.
DEFAULT_EVERY_S = 10
DEFAULT_BATCH_ROWS = 2000
DEFAULT_PAUSE_S = 0.02
#: The share of ``PRUNE_EVERY`` a run may take: it ends before the next tick, which goes on.
RUN_SHARE = 0.8

_FINISHED = sorted(status.value for status in FINAL_STATUSES)


@dataclass(frozen=True)
class PruneLimits:
    """How a prune run paces itself; see the README's settings table."""

    every_s: int = DEFAULT_EVERY_S
    batch_rows: int = DEFAULT_BATCH_ROWS
    pause_s: float = DEFAULT_PAUSE_S

    @property
    def run_budget_s(self) -> float:
        return self.every_s * RUN_SHARE


@dataclass
class Pruner:
    """Deletes finished jobs whose ``finished_at`` is older than the retention, with their result files.

    Dead letters of pruned failed jobs leave Redis too. Steps of a workflow
    still running are kept. ``keep_going`` is asked before every batch: the
    scheduler passes "still the leader and not stopping", so a run ends within
    one batch of a lost lease or a shutdown.
    """

    engine: Engine
    results: ResultStorage
    client: redis.Redis
    retention_s: float
    limits: PruneLimits = field(default_factory=PruneLimits)
    keep_going: Callable[[], bool] = lambda: True
    clock: Clock = field(default_factory=SystemClock)

    def run(self, now: datetime | None = None) -> int:
        """One run: batches until none is left or the run's budget is spent; the number of jobs deleted."""
        cutoff = (now or self.clock.now()) - timedelta(seconds=self.retention_s)
        prunable = _prunable(cutoff)
        deadline = self.clock.monotonic() + self.limits.run_budget_s
        total = 0
        after: str | None = None
        while self.keep_going():
            deleted, after = self._batch(prunable, after)
            total += deleted
            if after is None or self.clock.monotonic() + self.limits.pause_s >= deadline:
                break
            if self.limits.pause_s > 0:
                self.clock.sleep(self.limits.pause_s)
        if total:
            log.info("pruned %d finished job(s) older than %s", total, cutoff.isoformat(timespec="seconds"))
        return total

    def _batch(self, prunable: ColumnElement[bool], after: str | None) -> tuple[int, str | None]:
        """Delete one batch of rows with ids above ``after``; its last id, or None when no full batch was left.

        NOTE: the batch is a range of ids, so the client reads one row to bound it and only the rows that
        hold a result file or a dead letter (few: results go inline up to RESULT_INLINE_MAX_BYTES), not
        every id; reading and sending back every id cost more than the delete itself.
        """
        limit = self.limits.batch_rows
        in_range = prunable if after is None else and_(prunable, jobs.c.id > after)
        window = select(jobs.c.id).where(in_range).order_by(jobs.c.id).limit(limit).subquery()
        with self.engine.connect() as conn:
            found, last = conn.execute(select(func.count(), func.max(window.c.id))).one()
            if not found:
                return 0, None
            in_range = and_(in_range, jobs.c.id <= last)
            keeping = conn.execute(
                select(jobs.c.id, jobs.c.queue, jobs.c.result_url, jobs.c.dead).where(
                    in_range, or_(jobs.c.result_url.is_not(None), jobs.c.dead)
                )
            ).all()
        # Files and dead letters first: a crash in between leaves rows the next run deletes, never orphan files.
        # A storage outage stops the run here (``Unavailable``); the next tick takes the same rows again.
        for row in keeping:
            if row.result_url is not None:
                self.results.delete(result_reference(row.id))
        dead: dict[str, list[str]] = {}
        for row in keeping:
            if row.dead:
                dead.setdefault(row.queue, []).append(row.id)
        for queue, ids in dead.items():
            drop_dead_letters(self.client, queue, ids)
        # A row of the range that became prunable meanwhile with a file or a dead letter waits for the next run.
        plain = and_(jobs.c.result_url.is_(None), ~jobs.c.dead)
        handled = or_(plain, jobs.c.id.in_([row.id for row in keeping])) if keeping else plain
        with write_transaction(self.engine) as conn:
            done = conn.execute(delete(jobs).where(in_range, handled))
            # Their attempt history goes with them (the id range on its primary key; a kept row keeps its own).
            lower = () if after is None else (job_attempts.c.job_id > after,)
            gone = ~exists().where(jobs.c.id == job_attempts.c.job_id)
            conn.execute(delete(job_attempts).where(job_attempts.c.job_id <= last, *lower, gone))
        return done.rowcount, (last if found == limit else None)


def _prunable(cutoff: datetime) -> ColumnElement[bool]:
    running_workflow = exists().where(
        workflows.c.id == jobs.c.workflow_id, workflows.c.status == WorkflowStatus.RUNNING
    )
    return and_(
        jobs.c.status.in_(_FINISHED),
        # NOTE: ids are UUIDv7 of a time no later than creation, and a job finishes after it is created,
        # so this bound lets the primary key find the candidates in id order without an index on finished_at.
        jobs.c.id < id_lower_bound(cutoff),
        jobs.c.finished_at < cutoff,
        or_(jobs.c.workflow_id.is_(None), ~running_workflow),
    )
