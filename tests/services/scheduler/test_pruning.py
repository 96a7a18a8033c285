"""maintenance.prune: finished jobs past the retention leave in bounded batches, with their files and dead letters."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, insert, select, update

from services.scheduler.pruning import PruneLimits, Pruner
from services.scheduler.ticks import tick_job_id
from shared.broker.dead_letters import dead_letter_keys
from shared.broker.publishing import NAMESPACE
from shared.clock import FakeClock
from shared.errors import NotFound, Unavailable
from shared.job import JobStatus, utcnow
from shared.redis_server import free_port
from shared.results import DirectoryStorage, ResultStorage, build_result_storage, result_reference
from shared.store.jobs import JobFilter, JobStore
from shared.store.models import job_attempts, jobs
from shared.store.workflows import Workflow, WorkflowStatus, WorkflowStore
from tests.conftest import s3_client
from tests.shared.store.test_jobs import make_job

DAY = timedelta(days=1)
WEEK_S = 7 * 86400


def finish(engine: Engine, job_id: str, status: JobStatus, ago: timedelta, **values: object) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(jobs).where(jobs.c.id == job_id).values(status=status.value, finished_at=utcnow() - ago, **values)
        )


def pruner(engine: Engine, results: ResultStorage, client: redis.Redis, **limits: object) -> Pruner:
    return Pruner(engine, results, client, retention_s=WEEK_S, limits=PruneLimits(**limits))  # type: ignore[arg-type]


def old_finished(store: JobStore, engine: Engine, count: int, prefix: str = "old") -> list[str]:
    """``count`` jobs created ten days ago (ids are UUIDv7 of their creation: pruning relies on it), done 8 days ago."""
    created = utcnow() - 10 * DAY
    made = [make_job(id=tick_job_id(f"{prefix}-{i}", created), created_at=created) for i in range(count)]
    store.insert(made)
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id.in_([job.id for job in made]))
            .values(status=JobStatus.SUCCEEDED.value, finished_at=utcnow() - 8 * DAY)
        )
    return [job.id for job in made]


def count_jobs(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(jobs)).scalar_one())


def test_prune_deletes_old_finished_jobs_their_files_and_dead_letters(
    engine: Engine, store: JobStore, tmp_path: Path, redis_client: redis.Redis
) -> None:
    results = DirectoryStorage(tmp_path / "results")
    # Given jobs created ten days ago: three finished long ago, one recently, one still running
    created = utcnow() - 10 * DAY
    old = [make_job(id=tick_job_id(f"old-{i}", created), created_at=created) for i in range(3)]
    recent = make_job(id=tick_job_id("recent", created), created_at=created)
    running = make_job(id=tick_job_id("running", created), created_at=created)
    fresh = make_job()
    store.insert([*old, recent, running, fresh])
    with_file, dead, cancelled = old
    finish(engine, with_file.id, JobStatus.SUCCEEDED, 8 * DAY, result_url=f"/v1/jobs/{with_file.id}/result")
    results.put(with_file.id, b"a,b\n", "text/csv")
    finish(engine, dead.id, JobStatus.FAILED, 9 * DAY, dead=True)
    dead_letters, bodies = dead_letter_keys(NAMESPACE, "default")
    redis_client.zadd(dead_letters, {dead.id: 1})
    redis_client.hset(bodies, dead.id, json.dumps({"message_id": dead.id}))
    finish(engine, cancelled.id, JobStatus.CANCELLED, 8 * DAY)
    finish(engine, recent.id, JobStatus.SUCCEEDED, DAY)
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == running.id).values(status=JobStatus.RUNNING.value))
        # Each finished job has its attempt's history row
        conn.execute(insert(job_attempts), [
            {"job_id": job.id, "attempt": 1, "finished_at": utcnow() - 8 * DAY, "outcome": "succeeded"}
            for job in (*old, recent)
        ])  # fmt: skip

    # When pruning with a retention of a week, in batches of two
    pruned = pruner(engine, results, redis_client, batch_rows=2, pause_s=0).run()

    # Then only the old finished jobs are gone, with their result file and their dead letter
    assert pruned == 3
    left = {job.id for job in store.page(JobFilter(), limit=50).items}
    assert left == {recent.id, running.id, fresh.id}
    assert not (tmp_path / "results" / result_reference(with_file.id)).exists()
    assert redis_client.hlen(bodies) == 0 and redis_client.zcard(dead_letters) == 0
    # ... and with their attempt history, the kept job's history kept
    assert store.attempt_history(recent.id) != [] and all(store.attempt_history(job.id) == [] for job in old)
    assert pruner(engine, results, redis_client).run() == 0


def test_one_run_goes_on_past_kept_rows_until_the_backlog_is_gone(
    engine: Engine, store: JobStore, tmp_path: Path, redis_client: redis.Redis
) -> None:
    # Given 25 old finished jobs, and among the oldest, steps of a workflow still running (kept)
    workflow_store = WorkflowStore(engine)
    created = utcnow() - 10 * DAY
    steps = [make_job(id=tick_job_id(f"step-{i}", created - DAY), created_at=created - DAY) for i in range(3)]
    workflow = Workflow(
        id=tick_job_id("workflow", created), type="chain", status=WorkflowStatus.RUNNING,
        job_ids=[step.id for step in steps], callback_job_id=None, created_at=created, updated_at=created,
    )  # fmt: skip
    for step in steps:
        step.workflow_id = workflow.id
    workflow_store.create(workflow, steps)
    for step in steps:
        finish(engine, step.id, JobStatus.SUCCEEDED, 9 * DAY)
    old_finished(store, engine, 25)
    assert count_jobs(engine) == 28

    # When one run prunes in batches of four, pausing between them
    clock = FakeClock()
    run = Pruner(
        engine, DirectoryStorage(tmp_path), redis_client, retention_s=WEEK_S,
        limits=PruneLimits(every_s=10, batch_rows=4, pause_s=0.1), clock=clock,
    )  # fmt: skip

    # Then the whole backlog goes in that run (seven batches, six pauses), and the running workflow's steps stay
    assert run.run() == 25
    assert clock.monotonic() == pytest.approx(0.6)
    assert count_jobs(engine) == 3


def test_a_run_stops_within_its_budget_and_the_next_goes_on(
    engine: Engine, store: JobStore, tmp_path: Path, redis_client: redis.Redis
) -> None:
    # Given ten old finished jobs, and a run budget of 0.8 s (every 1 s) with pauses of 0.5 s
    old_finished(store, engine, 10)
    clock = FakeClock()
    run = Pruner(
        engine, DirectoryStorage(tmp_path), redis_client, retention_s=WEEK_S,
        limits=PruneLimits(every_s=1, batch_rows=3, pause_s=0.5), clock=clock,
    )  # fmt: skip
    # When it runs: two batches fit (at 0 s and 0.5 s; a third would start past the budget)
    assert run.run() == 6
    # Then the next run takes the rest
    assert run.run() == 4
    assert count_jobs(engine) == 0


def test_a_run_ends_when_told_to_stop(
    engine: Engine, store: JobStore, tmp_path: Path, redis_client: redis.Redis
) -> None:
    # Given a backlog of nine, and a scheduler that stops leading after the first batch
    old_finished(store, engine, 9)
    asked: list[bool] = []

    def keep_going() -> bool:
        asked.append(True)
        return len(asked) == 1

    run = Pruner(
        engine, DirectoryStorage(tmp_path), redis_client, retention_s=WEEK_S,
        limits=PruneLimits(batch_rows=3, pause_s=0), keep_going=keep_going,
    )  # fmt: skip
    # When it runs, then it deletes one batch and stops
    assert run.run() == 3
    assert count_jobs(engine) == 6


def _old_job_with_a_result(engine: Engine, store: JobStore, results: ResultStorage, name: str, ago: timedelta) -> str:
    created = utcnow() - 10 * DAY
    job = make_job(id=tick_job_id(name, created), created_at=created)
    store.insert([job])
    finish(engine, job.id, JobStatus.SUCCEEDED, ago, result_url=f"/v1/jobs/{job.id}/result")
    results.put(job.id, b"a,b\n", "text/csv")
    return job.id


def test_prune_deletes_result_objects_in_s3(
    engine: Engine, store: JobStore, redis_client: redis.Redis, s3_bucket: str, s3_endpoint: str
) -> None:
    results = build_result_storage(f"s3://{s3_bucket}/results")
    old = _old_job_with_a_result(engine, store, results, "old", 8 * DAY)
    recent = _old_job_with_a_result(engine, store, results, "recent", DAY)

    assert pruner(engine, results, redis_client).run() == 1

    objects = s3_client(s3_endpoint).list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert [entry["Key"] for entry in objects] == [f"results/{recent}"]
    with pytest.raises(NotFound):
        store.get(old)


def test_prune_keeps_the_rows_while_s3_is_unreachable(
    engine: Engine, store: JobStore, redis_client: redis.Redis, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an old job whose result is in S3, and then the endpoint goes away
    old = _old_job_with_a_result(engine, store, build_result_storage(f"s3://{s3_bucket}"), "old", 8 * DAY)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    results = build_result_storage(f"s3://{s3_bucket}")
    # When pruning, the run stops at the object it cannot delete (the scheduler logs it and runs again next tick)
    with pytest.raises(Unavailable):
        pruner(engine, results, redis_client).run()
    # Then the row stays, so the next run deletes object and row: no object is ever orphaned
    assert store.get(old).result_url == f"/v1/jobs/{old}/result"
