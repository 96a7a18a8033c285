"""Dead letters and queue counts (``shared/store/dead_letters.py``) on SQLite and PostgreSQL."""

from __future__ import annotations

from shared.job import JobStatus
from shared.store.jobs import JobStore
from tests.shared.store.test_jobs import make_job


def test_requeue_sends_back_only_the_final_jobs_an_operator_may_retry(store: JobStore) -> None:
    # Given a job that failed for good after two attempts, a cancelled one, a succeeded one and a waiting one
    dead = make_job(status=JobStatus.FAILED, dead=True, attempts=2)
    cancelled, succeeded, waiting = (
        make_job(status=JobStatus.CANCELLED),
        make_job(status=JobStatus.SUCCEEDED),
        make_job(),
    )
    store.insert([dead, cancelled, succeeded, waiting])
    store.mark_published([dead.id, cancelled.id])
    # When all four are requeued
    requeued = store.requeue([dead.id, cancelled.id, succeeded.id, waiting.id])
    # Then the failed and the cancelled are queued again, unpublished and no longer dead; attempts keep counting
    assert sorted(job.id for job in requeued) == sorted([dead.id, cancelled.id])
    again = store.get(dead.id)
    assert again.status is JobStatus.QUEUED and not again.dead and again.attempts == 2
    assert again.published_at is None and again.finished_at is None
    assert store.get(succeeded.id).status is JobStatus.SUCCEEDED
    assert store.requeue([]) == []


def test_requeue_of_a_queue_s_dead_letters_leaves_the_other_jobs(store: JobStore) -> None:
    dead, cancelled = make_job(status=JobStatus.FAILED, dead=True), make_job(status=JobStatus.CANCELLED)
    elsewhere = make_job(status=JobStatus.FAILED, dead=True, queue="other")
    store.insert([dead, cancelled, elsewhere])
    requeued = store.requeue([dead.id, cancelled.id, elsewhere.id], queue="default", dead_only=True)
    assert [job.id for job in requeued] == [dead.id]
    assert store.get(cancelled.id).status is JobStatus.CANCELLED and store.get(elsewhere.id).dead


def test_dead_ids_page_newest_first_and_purge_keeps_the_rows(store: JobStore) -> None:
    # Given three dead letters in one queue and one in another
    dead = [make_job(status=JobStatus.FAILED, dead=True) for _ in range(3)]
    store.insert([*dead, make_job(status=JobStatus.FAILED, dead=True, queue="other")])
    # Then they are listed newest first, a page at a time
    first = store.dead_ids("default", limit=2)
    assert first == [dead[2].id, dead[1].id]
    assert store.dead_ids("default", limit=2, before=first[-1]) == [dead[0].id]
    # When the queue is purged, its rows stay failed but are no dead letters any more
    assert store.purge_dead("default") == 3
    assert store.dead_ids("default") == [] and len(store.dead_ids("other")) == 1
    assert store.get(dead[0].id).status is JobStatus.FAILED


def test_queue_counts_and_counts_by_status(store: JobStore) -> None:
    running = make_job()
    store.insert([running, make_job(), make_job(status=JobStatus.FAILED, dead=True, queue="other")])
    store.claim(running.id, owner="w", lease_s=30)
    assert store.queue_counts() == {"default": {"running": 1, "dead": 0}, "other": {"running": 0, "dead": 1}}
    assert store.count_by_status() == {"running": 1, "queued": 1, "failed": 1}


def test_the_queues_holding_dead_letters_are_found_one_probe_each(store: JobStore) -> None:
    dead = {"status": JobStatus.FAILED, "dead": True}
    store.insert([
        make_job(queue="emails", **dead),
        make_job(queue="emails", **dead),
        make_job(queue="alpha", **dead),
        make_job(queue="beta", status=JobStatus.FAILED),
        make_job(queue="gamma", status=JobStatus.RUNNING),
    ])  # fmt: skip
    assert store.dead_queues() == ["alpha", "emails"]
    counts = store.queue_counts()
    assert counts["emails"] == {"running": 0, "dead": 2} and counts["alpha"] == {"running": 0, "dead": 1}
    assert counts["gamma"] == {"running": 1, "dead": 0} and "beta" not in counts


def test_dead_among_names_the_jobs_that_are_dead_letters_now(store: JobStore) -> None:
    dead = [make_job(status=JobStatus.FAILED, dead=True) for _ in range(3)]
    failed, waiting = make_job(status=JobStatus.FAILED), make_job()
    store.insert([*dead, failed, waiting])
    asked = [job.id for job in [*dead, failed, waiting]] + ["no-such-job"] * 600
    assert store.dead_among(asked) == {job.id for job in dead}
    assert store.dead_among([]) == set()
