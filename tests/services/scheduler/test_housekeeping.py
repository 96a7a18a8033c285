"""Built-in housekeeping: pruning finished jobs past the retention, with their files and dead letters; the relay."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from dramatiq import Message
from sqlalchemy import Engine, update

from services.scheduler.housekeeping import BUILTIN_INTERVALS_S, QueueNames, builtin_schedules, prune_finished
from services.scheduler.ticks import tick_job_id
from shared.errors import NotFound, Unavailable
from shared.ids import new_id
from shared.job import JobStatus, utcnow
from shared.redis_server import free_port
from shared.results import DirectoryStorage, ResultStorage, build_result_storage, result_reference
from shared.store.jobs import JobFilter, JobStore
from shared.store.models import jobs
from shared.store.tasks import TaskRegistry
from tests.conftest import s3_client
from tests.services.scheduler.conftest import SchedulerStack
from tests.shared.store.test_jobs import make_job

DAY = timedelta(days=1)


def finish(engine: Engine, job_id: str, status: JobStatus, ago: timedelta, **values: object) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(jobs).where(jobs.c.id == job_id).values(status=status.value, finished_at=utcnow() - ago, **values)
        )


def test_prune_deletes_old_finished_jobs_their_files_and_dead_letters(
    engine: Engine, store: JobStore, tmp_path: Path, redis_client: redis.Redis
) -> None:
    results = DirectoryStorage(tmp_path / "results")
    # Given jobs created ten days ago: three finished long ago, one recently, one still running
    created = utcnow() - 10 * DAY
    # Job ids are UUIDv7 of their creation time (pruning relies on it): make them ten days old too.
    old = [make_job(id=tick_job_id(f"old-{i}", created), created_at=created) for i in range(3)]
    recent = make_job(id=tick_job_id("recent", created), created_at=created)
    running = make_job(id=tick_job_id("running", created), created_at=created)
    fresh = make_job()
    store.insert([*old, recent, running, fresh])
    with_file, dead, cancelled = old
    finish(engine, with_file.id, JobStatus.SUCCEEDED, 8 * DAY, result_url=f"/v1/jobs/{with_file.id}/result")
    results.put(with_file.id, b"a,b\n", "text/csv")
    finish(engine, dead.id, JobStatus.FAILED, 9 * DAY, dead=True)
    redis_client.zadd("dramatiq:default.XQ", {"r-dead": 1})
    redis_client.hset("dramatiq:default.XQ.msgs", "r-dead", json.dumps({"message_id": dead.id}))
    finish(engine, cancelled.id, JobStatus.CANCELLED, 8 * DAY)
    finish(engine, recent.id, JobStatus.SUCCEEDED, DAY)
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == running.id).values(status=JobStatus.RUNNING.value))

    # When pruning with a retention of a week, in batches of two
    pruned = prune_finished(engine, results, redis_client, retention_s=7 * 86400, batch=2)

    # Then only the old finished jobs are gone, with their result file and their dead letter
    assert pruned == 3
    left = {job.id for job in store.page(JobFilter(), limit=50).items}
    assert left == {recent.id, running.id, fresh.id}
    assert not (tmp_path / "results" / result_reference(with_file.id)).exists()
    assert redis_client.hlen("dramatiq:default.XQ.msgs") == 0
    assert prune_finished(engine, results, redis_client, retention_s=7 * 86400) == 0


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

    assert prune_finished(engine, results, redis_client, retention_s=7 * 86400) == 1

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
    # When pruning, the run stops at the object it cannot delete (the scheduler logs it and runs again next hour)
    with pytest.raises(Unavailable):
        prune_finished(engine, results, redis_client, retention_s=7 * 86400)
    # Then the row stays, so the next run deletes object and row: no object is ever orphaned
    assert store.get(old).result_url == f"/v1/jobs/{old}/result"


def test_builtin_schedules_and_queue_names(registry: TaskRegistry) -> None:
    builtins = {s.id: s for s in builtin_schedules()}
    assert {name: s.interval_s for name, s in builtins.items()} == BUILTIN_INTERVALS_S
    assert builtins["maintenance.relay"].interval_s == 1 and builtins["maintenance.prune"].interval_s == 3600
    assert builtins["maintenance.reconcile"].interval_s == 30
    names = QueueNames(registry)
    assert names() == []
    names.refresh()
    assert "default" in names()


def test_the_leader_relays_jobs_left_unpublished_and_counts_them(
    scheduler_stack: SchedulerStack, redis_client: redis.Redis
) -> None:
    # Given a row written unpublished and an outbox entry an API process left behind
    store = JobStore(scheduler_stack.engine)
    old = utcnow() - timedelta(minutes=1)
    unpublished = make_job(created_at=old)
    store.insert([unpublished])
    handed = make_job()
    store.insert([handed], outbox_id=new_id())
    # When a scheduler leads (the relay runs every second, past RELAY_GRACE_S)
    leader = scheduler_stack.start("a")
    scheduler_stack.leader()
    # Then both jobs reach Redis once, and the leader counts them
    scheduler_stack.wait_for("two relayed", lambda: leader.metric("jobrelay_jobs_relayed_total") == 2.0, 15)
    stored: list[bytes] = redis_client.hvals("dramatiq:default.msgs")  # type: ignore[assignment]
    ids = sorted(Message.decode(data).message_id for data in stored)
    assert ids == sorted([unpublished.id, handed.id])
    assert store.outbox_left(older_than=utcnow()) == [] and store.unpublished(older_than=utcnow()) == []
