"""Dead letters and counts per queue: the store's side of the operator's queue and retry endpoints.

``JobStore`` (``shared/store/jobs.py``) takes these methods from ``DeadLetters``.
A dead letter is a job that failed for good (``dead`` set on its row); it stays
one until an operator requeues or purges it, or pruning deletes its row.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import ColumnElement, Connection, Engine, func, literal, select, text, update

from shared.job import Job, JobStatus, utcnow
from shared.store.engine import write_transaction
from shared.store.models import jobs

#: A queue's dead letters are counted exactly up to this many (``queue_counts``).
DEAD_EXACT_MAX = 1000

#: Final states an operator can send a job back to the queue from.
RETRYABLE_FINAL = frozenset({JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})


class DeadLetters:
    """The job store's dead-letter and queue-count methods (each one transaction).

    NOTE: every condition on dead letters is written ``WHERE dead``, the partial index's own
    predicate: PostgreSQL does not match ``dead IS true`` to it and scanned the whole table
    (85 ms instead of 2 ms for the counts of /v1/queues at 1,000,000 jobs).
    """

    engine: Engine

    def requeue(
        self,
        job_ids: Iterable[str],
        *,
        queue: str | None = None,
        dead_only: bool = False,
        namespace: str | None = None,
    ) -> list[Job]:
        """Put failed, cancelled or expired jobs back to ``queued`` (attempts keep counting).

        Returns the jobs requeued; the caller publishes them. Jobs in other states, or of another
        namespace than ``namespace`` (when given), are left alone.
        """
        ids = list(job_ids)
        if not ids:
            return []
        now = utcnow()
        conditions: list[ColumnElement[bool]] = [
            jobs.c.id.in_(ids),
            jobs.c.status.in_([s.value for s in RETRYABLE_FINAL]),
        ]
        if queue is not None:
            conditions.append(jobs.c.queue == queue)
        if dead_only:
            conditions.append(jobs.c.dead)
        if namespace is not None:
            conditions.append(jobs.c.namespace == namespace)
        with write_transaction(self.engine) as conn:
            chosen = [row.id for row in conn.execute(select(jobs.c.id).where(*conditions).with_for_update())]
            if chosen:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id.in_(chosen))
                    .values(
                        status=JobStatus.QUEUED.value,
                        dead=False,
                        cancel_requested=False,
                        published_at=None,
                        finished_at=None,
                        next_attempt_at=None,
                        scheduled_for=None,
                        # NOTE: an operator's re-run takes no part in uniqueness: a job of the same key
                        # may be waiting now, and the unique index would refuse the requeue.
                        unique_key=None,
                        unique_until=None,
                        # Push: its next final state is announced again.
                        push_due=jobs.c.callback_url.is_not(None),
                        updated_at=now,
                    )
                )
            if not chosen:
                return []
            return [Job.from_row(row) for row in conn.execute(select(jobs).where(jobs.c.id.in_(chosen)))]

    def dead_ids(
        self, queue: str, *, limit: int = 1000, before: str | None = None, namespace: str | None = None
    ) -> list[str]:
        """Ids of the queue's dead letters, newest first (of one namespace's jobs when ``namespace`` is given)."""
        query = select(jobs.c.id).where(jobs.c.queue == queue, jobs.c.dead)
        if namespace is not None:
            query = query.where(jobs.c.namespace == namespace)
        if before is not None:
            query = query.where(jobs.c.id < before)
        with self.engine.connect() as conn:
            return [row.id for row in conn.execute(query.order_by(jobs.c.id.desc()).limit(limit))]

    def dead_among(self, job_ids: Iterable[str]) -> set[str]:
        """Which of these jobs are dead letters now (500 ids per query)."""
        ids = list(job_ids)
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                query = select(jobs.c.id).where(jobs.c.id.in_(ids[start : start + 500]), jobs.c.dead)
                found.update(row.id for row in conn.execute(query))
        return found

    def purge_dead(self, queue: str) -> int:
        """Take every dead letter of a queue out of the dead-letter queue (the job rows stay, ``failed``)."""
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(jobs).where(jobs.c.queue == queue, jobs.c.dead).values(dead=False, updated_at=utcnow())
            )
        return done.rowcount

    def purge_dead_ids(self, queue: str, job_ids: Iterable[str]) -> list[str]:
        """Take these dead letters of the queue out of the dead-letter queue; returns the ids that were."""
        ids = list(job_ids)
        if not ids:
            return []
        conditions = [jobs.c.id.in_(ids), jobs.c.queue == queue, jobs.c.dead]
        with write_transaction(self.engine) as conn:
            chosen = [row.id for row in conn.execute(select(jobs.c.id).where(*conditions).with_for_update())]
            if chosen:
                conn.execute(update(jobs).where(jobs.c.id.in_(chosen)).values(dead=False, updated_at=utcnow()))
        return chosen

    def queue_counts(self) -> dict[str, dict[str, int]]:
        """Running and dead jobs per queue: each count reads at most its running rows or ``DEAD_EXACT_MAX`` entries.

        Running jobs are few (a worker's concurrency), counted through the index on status. Dead
        letters pile up (a million while an integration is down), so each queue's are counted
        exactly up to ``DEAD_EXACT_MAX`` and, past it on PostgreSQL, taken from the planner's
        estimate (statistics on queue and dead together, migration 0014), never below the exact
        bound; SQLite, for small installs, counts them all.
        """
        counts: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            running = select(jobs.c.queue, func.count()).where(jobs.c.status == JobStatus.RUNNING.value)
            for queue, n in conn.execute(running.group_by(jobs.c.queue)):
                counts.setdefault(queue, {"running": 0, "dead": 0})["running"] = n
            for queue in _dead_queues(conn):
                counts.setdefault(queue, {"running": 0, "dead": 0})["dead"] = _dead_count(conn, queue)
        return counts

    def dead_queues(self) -> list[str]:
        """The queues that hold dead letters, one index probe per queue."""
        with self.engine.connect() as conn:
            return _dead_queues(conn)

    def count_by_status(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status))
            return {status: count for status, count in rows}


# NOTE: a loose index scan: each step finds the next queue name in the index on dead letters, so the
# cost is one probe per queue however many dead letters each holds (a GROUP BY read them all).
_DEAD_QUEUES = text("""
WITH RECURSIVE dead_queues(queue) AS (
  SELECT min(queue) FROM jobs WHERE dead
  UNION ALL
  SELECT (SELECT min(later.queue) FROM jobs AS later WHERE later.dead AND later.queue > found.queue)
  FROM dead_queues AS found WHERE found.queue IS NOT NULL
)
SELECT queue FROM dead_queues WHERE queue IS NOT NULL
""")


def _dead_queues(conn: Connection) -> list[str]:
    return [row.queue for row in conn.execute(_DEAD_QUEUES)]


def _dead_count(conn: Connection, queue: str) -> int:
    """The dead letters of ``queue``: exact up to ``DEAD_EXACT_MAX``, PostgreSQL's estimate past it."""
    postgresql = conn.dialect.name == "postgresql"
    capped = select(literal(1)).where(jobs.c.queue == queue, jobs.c.dead)
    if postgresql:
        capped = capped.limit(DEAD_EXACT_MAX + 1)
    exact = int(conn.execute(select(func.count()).select_from(capped.subquery())).scalar_one())
    if exact <= DEAD_EXACT_MAX or not postgresql:
        return exact
    # NOTE: the planner's row estimate for the same condition, from the statistics ANALYZE keeps
    # (autovacuum refreshes them); the queue is bound as a literal, since EXPLAIN plans the text.
    sql = str(select(literal(1)).where(jobs.c.queue == queue, jobs.c.dead).compile(
        conn, compile_kwargs={"literal_binds": True}))  # fmt: skip
    # The text is SQLAlchemy's own compilation of the statement above (no user string is spliced in).
    explain = "EXPLAIN (FORMAT JSON) " + sql
    plan = conn.exec_driver_sql(explain).scalar_one()
    estimate = int(plan[0]["Plan"]["Plan Rows"])
    return max(exact, estimate)
