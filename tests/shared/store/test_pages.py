"""Pages of the job list: keyset order, and the walk's bound on the rows a page reads."""

from __future__ import annotations

import pytest

from shared.job import JobStatus
from shared.store import pages
from shared.store.jobs import JobFilter, JobStore
from tests.shared.store.test_jobs import make_job


def walk(store: JobStore, filters: JobFilter, limit: int) -> tuple[list[str], int]:
    """Every id the pages of ``filters`` hold, in order, and how many pages it took."""
    seen: list[str] = []
    cursor = None
    count = 0
    while True:
        page = store.page(filters, limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        seen.extend(job.id for job in page.items)
        count += 1
        if page.next_cursor is None:
            return seen, count
        cursor = page.next_cursor


def test_a_filter_the_index_does_not_hold_reads_at_most_the_scan_bound_per_page(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 12 jobs of a queue, of which the 2nd and the 9th are a tenant's
    monkeypatch.setattr(pages, "SCAN_ROWS", 4)
    made = [make_job(namespace="acme" if i in (1, 8) else None) for i in range(12)]
    store.insert(made)
    # When the tenant's jobs of the queue are listed (the queue's index walked), 4 rows read a page
    seen, count = walk(store, JobFilter(queue="default", namespace="acme"), limit=5)
    # Then every match comes once, newest first, over pages that stopped at the bound
    assert seen == [made[8].id, made[1].id]
    assert count == 4  # 12 rows read 4 at a time; the third walk stopped at its bound, the fourth finds the end


def test_pages_of_indexed_filters_are_full_until_the_last(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "SCAN_ROWS", 2)
    made = [make_job(status=JobStatus.FAILED, dead=True) for _ in range(5)] + [make_job() for _ in range(3)]
    store.insert(made)
    # queue and dead letters: one index holds both, so the bound does not apply
    seen, count = walk(store, JobFilter(queue="default", dead=True), limit=2)
    assert seen == sorted((job.id for job in made[:5]), reverse=True) and count == 3


def test_dead_letters_of_every_queue_walk_the_failed_jobs(store: JobStore) -> None:
    failed = make_job(status=JobStatus.FAILED)
    dead = make_job(status=JobStatus.FAILED, dead=True, queue="emails", task="emails.send")
    store.insert([dead, failed, make_job()])
    assert [job.id for job in store.page(JobFilter(dead=True)).items] == [dead.id]
    assert [job.id for job in store.page(JobFilter(dead=False, status=JobStatus.FAILED)).items] == [failed.id]
