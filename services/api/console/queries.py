"""The store queries the console's pages need, each one statement served by an index where it can be.

Lists are keyset-paginated on the time-ordered id (``shared/store/pages.py``'s
filters plus a time range and a search), so a page costs the same on the first
and the millionth row, and reads at most ``pages.SCAN_ROWS`` rows. Charts cover the last
hour: the jobs made in it are found through the id's time bound, the jobs finished in it
through the partial index on ``finished_at`` (migration 0015); they read that hour's rows only.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, cast, func, or_, select, text
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import Integer, Text

from shared.ids import id_lower_bound
from shared.job import Job, JobStatus, utcnow
from shared.store.jobs import JobFilter, JobStore, Page
from shared.store.models import jobs, workflows
from shared.store.pages import page_query

#: Charts and rates look back this far.
WINDOW = timedelta(hours=1)
BULK_MAX = 10_000
#: NOTE: a page of a filter no index holds reads at most ``pages.SCAN_ROWS`` rows and may come back
#: short, so the bulk actions' reach is also bounded in pages: at most 60 x 5,000 rows read.
BULK_PAGES = 60
#: NOTE: a search of the arguments reads the rows themselves (no index holds argument values), so
#: without a "created after" it looks at the last day only: at most a day of rows, never the table.
SEARCH_WINDOW = timedelta(days=1)
#: The dead-letter page groups this many of the newest dead letters.
DEAD_GROUPS_SCAN = 10_000
#: Above this many rows (PostgreSQL's estimate), the totals of final states come from its statistics.
EXACT_TOTALS_MAX_ROWS = 100_000


@dataclass(frozen=True)
class JobQuery:
    """The job list's filters: the API's list filters plus a time range and a search."""

    base: JobFilter = field(default_factory=JobFilter)
    created_before: datetime | None = None
    search: str | None = None


def _search(text: str) -> ColumnElement[bool]:
    """An exact id or idempotency key (both indexed), or a value inside the arguments."""
    return or_(
        jobs.c.id == text,
        jobs.c.idempotency_key == text,
        cast(jobs.c.args, Text).contains(text, autoescape=True),
    )


def page_jobs(store: JobStore, query: JobQuery, *, limit: int = 50, cursor: str | None = None) -> Page:
    """One page of the job list, newest first."""
    base = query.base
    if query.search:
        exact = _exact(store, query.search)
        if exact is not None:
            return Page(items=[exact], next_cursor=None)
        if base.created_after is None:
            base = replace(base, created_after=utcnow() - SEARCH_WINDOW)
    checks = [_search(query.search)] if query.search else []
    query_ = page_query(base, limit=limit, cursor=cursor, created_before=query.created_before, checks=checks)
    with store.engine.connect() as conn:
        return query_.run(conn)


def _exact(store: JobStore, text: str) -> Job | None:
    """The job whose id or idempotency key is ``text``: two index probes before any scan."""
    with store.engine.connect() as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == text)).first()
        if row is None:
            row = conn.execute(select(jobs).where(jobs.c.idempotency_key == text)).first()
    return Job.from_row(row) if row is not None else None


def matching_ids(store: JobStore, query: JobQuery, *, limit: int = BULK_MAX) -> list[str]:
    """The ids of every job matching the list's filters, at most ``limit`` (the bulk actions' reach)."""
    ids: list[str] = []
    cursor = None
    for _ in range(BULK_PAGES):
        if len(ids) >= limit:
            break
        page = page_jobs(store, query, limit=min(500, limit - len(ids)), cursor=cursor)
        ids.extend(job.id for job in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return ids


def count_matching(store: JobStore, query: JobQuery, *, limit: int = BULK_MAX) -> int:
    """How many jobs match, counted up to ``limit`` + 1 (more than that is said as "more than")."""
    return len(matching_ids(store, query, limit=limit + 1))


# -- overview and charts -----------------------------------------------------------


def _minute(dialect: str, column: Any) -> Any:
    """Whole minutes since the epoch of a timestamp column, in the database's own arithmetic."""
    if dialect == "postgresql":
        return func.floor(func.extract("epoch", column) / 60)
    return cast(func.strftime("%s", column), Integer) // 60


def rates(store: JobStore, now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Per queue over the last hour: jobs in (created), out (finished), failed, and each per minute.

    Returns ``{queue: {"in": n, "out": n, "failed": n, "per_minute": [(in, out, failed) x 60]}}``.
    """
    now = now or utcnow()
    since = now - WINDOW
    dialect = store.engine.dialect.name
    # The 60 buckets end with the current minute.
    start_minute = int(now.timestamp() // 60) - 59
    created = _minute(dialect, jobs.c.created_at)
    finished = _minute(dialect, jobs.c.finished_at)
    made = (
        select(jobs.c.queue, created.label("m"), func.count())
        .where(jobs.c.id >= id_lower_bound(since), jobs.c.created_at >= since)
        .group_by(jobs.c.queue, created)
    )
    failed_state = or_(jobs.c.status == JobStatus.FAILED.value, jobs.c.status == JobStatus.EXPIRED.value)
    ended = (
        select(jobs.c.queue, finished.label("m"), func.count(), func.sum(case((failed_state, 1), else_=0)))
        .where(jobs.c.finished_at >= since)
        .group_by(jobs.c.queue, finished)
    )
    out: dict[str, dict[str, Any]] = {}

    def entry(queue: str) -> dict[str, Any]:
        return out.setdefault(queue, {"in": 0, "out": 0, "failed": 0, "per_minute": [[0, 0, 0] for _ in range(60)]})

    with store.engine.connect() as conn:
        for queue, minute, n in conn.execute(made):
            slot = int(minute) - start_minute
            item = entry(queue)
            item["in"] += n
            if 0 <= slot < 60:
                item["per_minute"][slot][0] += n
        for queue, minute, n, failed in conn.execute(ended):
            slot = int(minute) - start_minute
            item = entry(queue)
            item["out"] += n
            item["failed"] += int(failed or 0)
            if 0 <= slot < 60:
                item["per_minute"][slot][1] += n
                item["per_minute"][slot][2] += int(failed or 0)
    return out


def duration_percentiles(store: JobStore, now: datetime | None = None) -> dict[str, dict[str, float]]:
    """p50, p90, p99 and the count of the run time of each task's jobs that succeeded in the last hour."""
    now = now or utcnow()
    since = now - WINDOW
    recent = and_(
        jobs.c.finished_at >= since,
        jobs.c.status == JobStatus.SUCCEEDED.value,
        jobs.c.started_at.is_not(None),
    )
    result: dict[str, dict[str, float]] = {}
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "postgresql":
            seconds = func.extract("epoch", jobs.c.finished_at - jobs.c.started_at)
            statement = (
                select(
                    jobs.c.task,
                    func.count(),
                    func.percentile_cont(0.5).within_group(seconds),
                    func.percentile_cont(0.9).within_group(seconds),
                    func.percentile_cont(0.99).within_group(seconds),
                )
                .where(recent)
                .group_by(jobs.c.task)
            )
            for task, n, p50, p90, p99 in conn.execute(statement):
                result[task] = {"count": n, "p50": float(p50), "p90": float(p90), "p99": float(p99)}
            return result
        # NOTE: SQLite has no percentile function; its stores are small, so the durations are read.
        by_task: dict[str, list[float]] = {}
        for task, started, ended in conn.execute(
            select(jobs.c.task, jobs.c.started_at, jobs.c.finished_at).where(recent)
        ):
            by_task.setdefault(task, []).append((ended - started).total_seconds())
    for task, values in by_task.items():
        values.sort()
        cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
        result[task] = {"count": len(values), "p50": cuts[49], "p90": cuts[89], "p99": cuts[98]}
    return result


def state_totals(store: JobStore) -> tuple[dict[str, int], bool]:
    """Jobs per state, and whether the final states' counts are estimates.

    Waiting and running states are counted exactly (their rows are few, found through the
    index on status). The final states hold nearly every row: counting them reads the whole
    table, so on a PostgreSQL table of more than ``EXACT_TOTALS_MAX_ROWS`` rows their counts
    come from the planner's statistics (``pg_stats``, refreshed by autovacuum's analyze).
    """
    live = [status.value for status in JobStatus if not status.is_final]
    with store.engine.connect() as conn:
        counted = select(jobs.c.status, func.count()).where(jobs.c.status.in_(live)).group_by(jobs.c.status)
        totals = {status: 0 for status in (s.value for s in JobStatus)}
        totals.update({status: n for status, n in conn.execute(counted)})
        if store.engine.dialect.name == "postgresql":
            estimate = conn.execute(text(_PG_STATUS_ESTIMATE)).first()
            if estimate is not None and estimate.reltuples > EXACT_TOTALS_MAX_ROWS and estimate.vals:
                for status, share in zip(estimate.vals, estimate.freqs, strict=False):
                    if status in totals and status not in live:
                        totals[status] = round(share * estimate.reltuples)
                return totals, True
        final = [status.value for status in JobStatus if status.is_final]
        exact = select(jobs.c.status, func.count()).where(jobs.c.status.in_(final)).group_by(jobs.c.status)
        totals.update({status: n for status, n in conn.execute(exact)})
    return totals, False


_PG_STATUS_ESTIMATE = """
SELECT c.reltuples, s.most_common_vals::text::text[] AS vals, s.most_common_freqs AS freqs
FROM pg_class AS c
LEFT JOIN pg_stats AS s ON s.schemaname = current_schema() AND s.tablename = 'jobs' AND s.attname = 'status'
WHERE c.oid = 'jobs'::regclass
"""


def running_by_owner(store: JobStore) -> dict[str, int]:
    """Jobs running now per worker process (lease owner), from the index on the lease owner."""
    statement = (
        select(jobs.c.lease_owner, func.count())
        .where(jobs.c.lease_owner.is_not(None), jobs.c.status == JobStatus.RUNNING.value)
        .group_by(jobs.c.lease_owner)
    )
    with store.engine.connect() as conn:
        return {owner: n for owner, n in conn.execute(statement)}


def dead_groups(store: JobStore) -> list[dict[str, Any]]:
    """The newest ``DEAD_GROUPS_SCAN`` dead letters grouped by queue, task and error type, largest group first,
    each with one example message.

    NOTE: dead letters are failed jobs, so the index on status walks them newest first; grouping
    every dead letter read them all (a million while an integration is down).
    """
    newest = (
        select(jobs.c.id, jobs.c.queue, jobs.c.task, jobs.c.error)
        .where(jobs.c.status == JobStatus.FAILED.value, jobs.c.dead)
        .order_by(jobs.c.id.desc())
        .limit(DEAD_GROUPS_SCAN)
        .subquery("newest")
    )
    kind = func.coalesce(newest.c.error["type"].as_string(), "unknown")
    statement = select(newest.c.queue, newest.c.task, kind.label("kind"), func.count(), func.max(newest.c.id)).group_by(
        newest.c.queue, newest.c.task, kind
    )
    groups = []
    with store.engine.connect() as conn:
        rows = conn.execute(statement).all()
        examples = {}
        example_ids = [row[4] for row in rows]
        if example_ids:
            found = conn.execute(select(jobs.c.id, jobs.c.error).where(jobs.c.id.in_(example_ids)))
            examples = {row.id: row.error for row in found}
    for queue, task, error_type, count, example_id in rows:
        example = examples.get(example_id)
        message = str(example.get("message", ""))[:200] if isinstance(example, dict) else ""
        groups.append({"queue": queue, "task": task, "error_type": error_type, "count": count, "example": message})
    return sorted(groups, key=lambda g: (-g["count"], g["queue"], g["task"], g["error_type"]))


def dead_ids_of_group(store: JobStore, queue: str, task: str | None, error_type: str | None) -> list[str]:
    """The dead letters of one group (``task`` and ``error_type`` None: the whole queue)."""
    conditions: list[ColumnElement[bool]] = [jobs.c.dead, jobs.c.queue == queue]
    if task is not None:
        conditions.append(jobs.c.task == task)
    with store.engine.connect() as conn:
        rows = conn.execute(select(jobs.c.id, jobs.c.error).where(*conditions).order_by(jobs.c.id))
        return [row.id for row in rows if error_type is None or (row.error or {}).get("type", "unknown") == error_type]


def recent_fires(store: JobStore, schedule_id: str, *, limit: int = 5) -> list[Job]:
    """A schedule's latest jobs, newest first (the partial index on schedule_id)."""
    return store.page(JobFilter(schedule_id=schedule_id), limit=limit).items


def recent_workflows(store: JobStore, *, limit: int = 50) -> list[dict[str, Any]]:
    statement = select(workflows).order_by(workflows.c.id.desc()).limit(limit)
    with store.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(statement)]
