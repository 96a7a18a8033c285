"""Every list query the API makes is served by an index: no full scan of the jobs table.

SQLite's planner picks indexes by their shape, so its plans hold at a million
rows as at ten; PostgreSQL's weighs table size, so there the test disables
sequential scans and checks that an index path exists for each query (with
a million rows and fresh statistics the planner takes it by cost).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

from shared.job import JobStatus, utcnow
from shared.store.jobs import _BY_KEYS_SELECT, JobFilter, JobStore, encode_cursor
from shared.store.models import jobs

FILTERS = {
    "newest first": JobFilter(),
    "by status": JobFilter(status=JobStatus.FAILED),
    "by task": JobFilter(task="diagnostics.echo"),
    "by queue": JobFilter(queue="default"),
    "by workflow": JobFilter(workflow_id="01a20c37-2245-7190-9508-c8914ae674fd"),
    "by schedule": JobFilter(schedule_id="nightly"),
    "dead letters of a queue": JobFilter(queue="default", dead=True),
}


def plan(engine: Engine, store: JobStore, filters: JobFilter, *, cursor: bool) -> str:
    """The plan of the exact SELECT ``JobStore.page`` runs."""
    query = store.page_query(
        filters, limit=50, cursor=encode_cursor("01a20c37-0000-7000-8000-000000000000") if cursor else None
    )
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))
            return "\n".join(str(row[-1]) for row in rows)
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        rows = conn.execute(text(f"EXPLAIN {compiled}"))
        return "\n".join(str(row[0]) for row in rows)


@pytest.mark.parametrize("cursor", [False, True], ids=["first page", "next page"])
@pytest.mark.parametrize("name", list(FILTERS))
def test_list_queries_use_an_index(engine: Engine, store: JobStore, name: str, cursor: bool) -> None:
    text_plan = plan(engine, store, FILTERS[name], cursor=cursor)
    if engine.dialect.name == "sqlite":
        # "SCAN jobs" alone is a full table scan; "USING INDEX" / "USING ... PRIMARY KEY" is not.
        assert "USING" in text_plan, f"{name}: {text_plan}"
        assert "TEMP B-TREE" not in text_plan, f"{name} sorts in memory: {text_plan}"
    else:
        assert "Seq Scan" not in text_plan, f"{name}: {text_plan}"
        assert "Index" in text_plan, f"{name}: {text_plan}"


def test_created_after_is_bounded_by_the_time_ordered_id(engine: Engine, store: JobStore) -> None:
    text_plan = plan(engine, store, JobFilter(created_after=utcnow() - timedelta(hours=1)), cursor=False)
    if engine.dialect.name == "sqlite":
        assert "USING" in text_plan, text_plan
    else:
        assert "Seq Scan" not in text_plan, text_plan


def test_the_jobs_table_has_the_indexes_the_plans_rely_on() -> None:
    names = {index.name for index in jobs.indexes}
    assert {"ix_jobs_status_id", "ix_jobs_task_id", "ix_jobs_queue_id", "ix_jobs_workflow_id",
            "ix_jobs_schedule_id", "ix_jobs_dead"} <= names  # fmt: skip


def test_the_idempotency_key_lookup_uses_its_unique_index(engine: Engine) -> None:
    query = _BY_KEYS_SELECT.params(keys=["k1", "k2"])
    sql = query.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            text_plan = "\n".join(str(row[-1]) for row in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
        else:
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            text_plan = "\n".join(str(row[0]) for row in conn.execute(text(f"EXPLAIN {sql}")))
    assert "ux_jobs_idempotency_key" in text_plan, text_plan


PARTIAL = ["ix_jobs_workflow_id", "ix_jobs_schedule_id", "ux_jobs_idempotency_key", "ix_jobs_lease_owner"]


def test_indexes_on_mostly_null_columns_leave_the_null_rows_out(engine: Engine) -> None:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'"))
        else:
            rows = conn.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs'"))
        definitions = {name: sql for name, sql in rows}
    for name in PARTIAL:
        assert "IS NOT NULL" in definitions[name], definitions[name]
