"""A dead worker's recovery (``shared/broker/orphans.py``) in bounded script calls, whatever its ack sets hold."""

from __future__ import annotations

import redis
from dramatiq import Message

from shared.broker.bands import band_key
from shared.broker.dead_letters import dead_letter_keys
from shared.broker.orphans import requeue_worker
from shared.broker.publishing import NAMESPACE, build_broker, message_for
from tests.services.worker.conftest import worker_broker
from tests.shared.broker.test_dead_letters import calls_during
from tests.shared.store.test_jobs import make_job


def test_a_dead_workers_big_ack_sets_go_back_a_batch_per_call(redis_url: str, redis_client: redis.Redis) -> None:
    # Given a worker that fetched 1,200 messages of a queue (priority 3) and 300 delayed ones, then died
    publisher = build_broker(redis_url)
    jobs = [make_job(priority=3) for _ in range(1_200)]
    publisher.enqueue_many([(message_for(job), None) for job in jobs])
    publisher.enqueue_many([(message_for(make_job()), 60_000) for _ in range(300)])
    broker = worker_broker(redis_url, "gone")
    fetched = []
    while got := broker.fetch_banded("default", 500):
        fetched += got
    assert len(fetched) == 1_200 and len(broker.do_fetch("default.DQ", 1_000)) == 300
    dropped, dead = jobs[0].id, jobs[1].id
    # When it is recovered 500 messages per script call, one job's message dropped and one's dead-lettered
    moved: list[int] = []
    calls = calls_during(
        redis_client,
        lambda: moved.append(requeue_worker(redis_client, "gone", drop=[dropped], dead=[dead], batch=500)),
    )
    # Then every other message is back: the queue's in their band, the delayed ones in the delay queue
    assert moved == [1_198 + 300]
    assert redis_client.llen(band_key("dramatiq:default", 3)) == 1_198
    assert redis_client.llen("dramatiq:default.DQ") == 300
    bodies = redis_client.hvals("dramatiq:default.msgs")
    assert len(bodies) == 1_198 and dropped not in {Message.decode(body).message_id for body in bodies}
    zset, dead_bodies = dead_letter_keys(NAMESPACE, "default")
    assert redis_client.zrange(zset, 0, -1) == [dead.encode()] and redis_client.hexists(dead_bodies, dead)
    assert not redis_client.exists(broker.ack_sets.key("default"), broker.ack_sets.key("default.DQ"))
    # and no call took more than its batch: three calls (one SPOP each) for the queue's 1,200, one for the 300
    assert calls.get("spop") == 4
    assert "smembers" not in calls, calls
