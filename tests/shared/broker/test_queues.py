"""Queue stats and gauges read from a real Redis and store."""

from __future__ import annotations

import time
from dataclasses import replace

import redis
from prometheus_client import CollectorRegistry

from shared.broker.pausing import mirror_pause
from shared.broker.publishing import build_broker, message_for, redis_client
from shared.broker.queues import QueueGauges, oldest_age_s, queue_stats
from shared.job import JobStatus
from shared.store.jobs import JobStore
from tests.shared.store.test_jobs import make_job


def test_stats_and_gauges(redis_url: str, redis_client: redis.Redis, store: JobStore) -> None:
    # Given two waiting jobs, one delayed, one running and one dead
    broker = build_broker(redis_url)
    waiting = [make_job() for _ in range(2)]
    for job in waiting:
        broker.enqueue(message_for(job))
    broker.enqueue(message_for(make_job()), delay=60_000)
    running, dead = make_job(), make_job()
    store.insert([running, dead])
    store.claim(running.id, owner="w", lease_s=30)
    store.claim(dead.id, owner="w", lease_s=30)
    store.finish(dead.id, owner="w", status=JobStatus.FAILED, error={"type": "X", "message": "x", "retryable": False})
    time.sleep(0.05)
    # Then the stats say so
    [default] = queue_stats(redis_client, store, ["default"])
    assert (default.depth, default.delayed, default.in_progress, default.dead) == (2, 1, 1, 1)
    assert default.oldest_age_s > 0 and oldest_age_s(redis_client, "empty") == 0.0
    registry = CollectorRegistry()
    registry.register(QueueGauges(redis_client, store, lambda: ["default", "other"]))
    assert registry.get_sample_value("jobrelay_queue_depth", {"queue": "default"}) == 2
    assert registry.get_sample_value("jobrelay_queue_delayed", {"queue": "default"}) == 1
    assert registry.get_sample_value("jobrelay_queue_dead", {"queue": "default"}) == 1
    assert registry.get_sample_value("jobrelay_queue_depth", {"queue": "other"}) == 0
    assert (registry.get_sample_value("jobrelay_queue_oldest_age_seconds", {"queue": "default"}) or 0) > 0
    assert registry.get_sample_value("jobrelay_queue_paused", {"queue": "default"}) == 0
    # and a paused queue is 1, its jobs of every priority counted
    mirror_pause(redis_client, "other")
    broker.enqueue(message_for(replace(make_job(), queue="other", priority=8)))
    assert registry.get_sample_value("jobrelay_queue_paused", {"queue": "other"}) == 1
    assert registry.get_sample_value("jobrelay_queue_depth", {"queue": "other"}) == 1


def test_gauges_survive_redis_being_away(store: JobStore) -> None:
    registry = CollectorRegistry()
    registry.register(QueueGauges(redis_client("redis://127.0.0.1:1/0"), store, lambda: ["default"]))
    assert registry.get_sample_value("jobrelay_queue_depth", {"queue": "default"}) is None
