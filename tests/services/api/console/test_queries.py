"""The console's store queries on SQLite and PostgreSQL: filters, keyset pages, counts and chart data."""

from __future__ import annotations

from datetime import timedelta

from services.api.console import queries
from services.api.console.queries import (
    JobQuery,
    count_matching,
    dead_groups,
    dead_ids_of_group,
    duration_percentiles,
    matching_ids,
    page_jobs,
    rates,
    running_by_owner,
    state_totals,
)
from shared.ids import new_id
from shared.job import JobStatus, utcnow
from shared.store.jobs import JobFilter, JobStore
from tests.shared.store.test_jobs import make_job


def test_pages_walk_every_match_once_newest_first(store: JobStore) -> None:
    jobs = [make_job() for _ in range(7)]
    store.insert(jobs)
    seen, cursor = [], None
    while True:
        page = page_jobs(store, JobQuery(), limit=3, cursor=cursor)
        seen.extend(job.id for job in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted((job.id for job in jobs), reverse=True)


def test_time_range_and_search(store: JobStore) -> None:
    now = utcnow()
    # ids carry their creation time: an hour-old job has an hour-old id
    old = make_job(
        id=_id_at(now - timedelta(hours=1)), created_at=now - timedelta(hours=1), args={"to": "ann@example.org"}
    )
    new = make_job(args={"to": "bob@example.org"}, idempotency_key="invoice-7")
    store.insert([old, new])
    before = JobQuery(created_before=now - timedelta(minutes=30))
    assert [j.id for j in page_jobs(store, before).items] == [old.id]
    after = JobQuery(base=JobFilter(created_after=now - timedelta(minutes=30)))
    assert [j.id for j in page_jobs(store, after).items] == [new.id]
    assert [j.id for j in page_jobs(store, JobQuery(search="ann@example")).items] == [old.id]
    assert [j.id for j in page_jobs(store, JobQuery(search="invoice-7")).items] == [new.id]
    assert [j.id for j in page_jobs(store, JobQuery(search=old.id)).items] == [old.id]
    # LIKE's own wildcards are plain text in a search
    assert page_jobs(store, JobQuery(search="%")).items == []


def test_matching_ids_and_count_stop_at_their_limit(store: JobStore) -> None:
    store.insert([make_job() for _ in range(12)] + [make_job(task="diagnostics.sleep", args={"seconds": 1})])
    query = JobQuery(base=JobFilter(task="diagnostics.echo"))
    assert len(matching_ids(store, query)) == 12
    assert len(matching_ids(store, query, limit=5)) == 5
    assert count_matching(store, query, limit=10) == 11  # "more than 10"


def test_rates_count_in_out_and_failed_per_queue_and_minute(store: JobStore) -> None:
    now = utcnow()
    done = dict(started_at=now, finished_at=now)
    store.insert([
        make_job(status=JobStatus.SUCCEEDED, **done),
        make_job(status=JobStatus.FAILED, **done),
        make_job(),
        make_job(queue="emails", task="emails.send"),
        make_job(id=_id_at(now - timedelta(hours=3)), created_at=now - timedelta(hours=3)),
    ])  # fmt: skip
    found = rates(store, now + timedelta(seconds=1))
    assert found["default"]["in"] == 3 and found["default"]["out"] == 2 and found["default"]["failed"] == 1
    assert found["emails"]["in"] == 1 and found["emails"]["out"] == 0
    assert found["default"]["per_minute"][-1] == [3, 2, 1]
    assert sum(m[0] for m in found["default"]["per_minute"]) == 3


def test_duration_percentiles_per_task(store: JobStore) -> None:
    now = utcnow()
    store.insert([
        make_job(status=JobStatus.SUCCEEDED, started_at=now - timedelta(seconds=s), finished_at=now)
        for s in range(1, 101)
    ])  # fmt: skip
    found = duration_percentiles(store, now + timedelta(seconds=1))["diagnostics.echo"]
    assert found["count"] == 100
    assert 50 <= found["p50"] <= 51 and 90 <= found["p90"] <= 91 and 99 <= found["p99"] <= 100


def test_dead_groups_and_their_ids(store: JobStore) -> None:
    def dead(kind: str, task: str = "diagnostics.echo"):  # type: ignore[no-untyped-def]
        return make_job(task=task, status=JobStatus.FAILED, dead=True, error={"type": kind, "message": kind})

    jobs = [dead("ValueError"), dead("ValueError"), dead("KeyError"), dead("ValueError", "diagnostics.fail")]
    store.insert([*jobs, make_job(status=JobStatus.FAILED, error={"type": "ValueError"})])
    groups = [(g["task"], g["error_type"], g["count"]) for g in dead_groups(store)]
    assert groups == [("diagnostics.echo", "ValueError", 2), ("diagnostics.echo", "KeyError", 1),
                      ("diagnostics.fail", "ValueError", 1)]  # fmt: skip
    assert set(dead_ids_of_group(store, "default", "diagnostics.echo", "ValueError")) == {jobs[0].id, jobs[1].id}
    assert len(dead_ids_of_group(store, "default", None, None)) == 4


def test_running_by_owner(store: JobStore) -> None:
    store.insert([
        make_job(status=JobStatus.RUNNING, lease_owner="a-0-x"),
        make_job(status=JobStatus.RUNNING, lease_owner="a-0-x"),
        make_job(status=JobStatus.RUNNING, lease_owner="b-1-y"),
        make_job(),
    ])  # fmt: skip
    assert running_by_owner(store) == {"a-0-x": 2, "b-1-y": 1}


def _id_at(moment):  # type: ignore[no-untyped-def]
    """A job id made at ``moment`` (ids are time-ordered UUIDv7)."""
    from shared.ids import id_lower_bound

    base = id_lower_bound(moment)
    return base[:-12] + new_id()[-12:]


def test_an_argument_search_looks_at_the_last_day_unless_told_a_start(store: JobStore) -> None:
    now = utcnow()
    old = make_job(id=_id_at(now - timedelta(days=2)), created_at=now - timedelta(days=2), args={"to": "eve@example"})
    store.insert([old])
    assert page_jobs(store, JobQuery(search="eve@example")).items == []
    since = JobQuery(base=JobFilter(created_after=now - timedelta(days=3)), search="eve@example")
    assert [j.id for j in page_jobs(store, since).items] == [old.id]
    # An exact id or key is found whatever its age.
    assert [j.id for j in page_jobs(store, JobQuery(search=old.id)).items] == [old.id]


def test_state_totals_are_exact_on_a_small_store(store: JobStore) -> None:
    store.insert([make_job(), make_job(), make_job(status=JobStatus.SUCCEEDED), make_job(status=JobStatus.FAILED)])
    totals, estimated = state_totals(store)
    assert not estimated
    assert totals["queued"] == 2 and totals["succeeded"] == 1 and totals["failed"] == 1 and totals["running"] == 0
    assert set(totals) == {status.value for status in JobStatus}


def test_state_totals_of_final_states_are_estimated_on_a_large_postgresql_table(
    required_postgres_url: str,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    from sqlalchemy import text

    from shared.store.engine import create_store_engine

    store = JobStore(create_store_engine(required_postgres_url))
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs"))
    store.insert([make_job(status=JobStatus.SUCCEEDED) for _ in range(30)] + [make_job() for _ in range(3)])
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE jobs"))
    # Given a threshold the table is over
    monkeypatch.setattr(queries, "EXACT_TOTALS_MAX_ROWS", 10)
    totals, estimated = state_totals(store)
    # Then the final states come from the statistics (a table this small is sampled whole) and the rest is exact
    assert estimated
    assert totals["succeeded"] == 30 and totals["queued"] == 3
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs"))
    store.engine.dispose()
