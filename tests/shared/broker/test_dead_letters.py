"""Dead letters by job id (``shared/broker/dead_letters.py``): each call's work bounded by its ids, not by the set.

How much work Redis did is read from its own command counters (``INFO commandstats``, which
count the commands a script runs too), so the bound is checked without any clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import redis
from dramatiq import Message

from shared.broker.dead_letters import OldDeadLetters, dead_letter_keys, drop_dead_letters, old_dead_letter_keys
from shared.broker.publishing import NAMESPACE, build_broker, message_for
from tests.services.worker.conftest import worker_broker
from tests.shared.store.test_jobs import make_job

#: Commands that read a whole hash, set or sorted set (or a slice of one the caller did not bound).
WHOLE = {"hgetall", "hvals", "hkeys", "hscan", "smembers", "zrange", "zrangebyscore", "keys", "scan"}


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, dict[str, int]] = client.info("commandstats")  # type: ignore[assignment]
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


def calls_during(client: redis.Redis, action: Callable[[], object]) -> dict[str, int]:
    """The commands Redis ran while ``action`` ran (from any client: the tests here run alone)."""
    before = command_calls(client)
    action()
    after = command_calls(client)
    return {name: n - before.get(name, 0) for name, n in after.items() if n - before.get(name, 0)}


def store_dead_letters(client: redis.Redis, queue: str, job_ids: list[str], *, old: bool = False) -> dict[str, str]:
    """Dead letters of these jobs, as the worker files them (or Dramatiq did: ``old``); the Redis ids used."""
    zset, bodies = old_dead_letter_keys(NAMESPACE, queue) if old else dead_letter_keys(NAMESPACE, queue)
    redis_ids = {job_id: f"r-{job_id}" if old else job_id for job_id in job_ids}
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(job_ids), 1000):
        chunk = job_ids[start : start + 1000]
        pipe.zadd(zset, {redis_ids[job_id]: 1000 + i for i, job_id in enumerate(chunk, start)})
        pipe.hset(
            bodies,
            mapping={redis_ids[job_id]: message_for(make_job(id=job_id, queue=queue)).encode() for job_id in chunk},
        )
    pipe.execute()
    return redis_ids


def test_dropping_dead_letters_touches_only_their_ids(redis_client: redis.Redis) -> None:
    # Given 20,000 dead letters of a queue
    ids = [make_job().id for _ in range(20_000)]
    store_dead_letters(redis_client, "q", ids)
    zset, bodies = dead_letter_keys(NAMESPACE, "q")
    # When three are dropped (one of them twice, and an id with no dead letter)
    calls = calls_during(redis_client, lambda: drop_dead_letters(redis_client, NAMESPACE, "q", [*ids[:3], ids[0], "x"]))
    # Then Redis removed them by id: one ZREM and one HDEL, nothing read the rest
    assert not WHOLE & set(calls) and calls.get("zrem") == 1 and calls.get("hdel") == 1
    assert redis_client.zcard(zset) == redis_client.hlen(bodies) == 19_997
    assert not redis_client.hexists(bodies, ids[0]) and redis_client.hexists(bodies, ids[3])
    assert drop_dead_letters(redis_client, NAMESPACE, "q", []) == 0


def test_a_long_list_of_ids_is_dropped_in_bounded_commands(redis_client: redis.Redis) -> None:
    ids = [make_job().id for _ in range(1_200)]
    store_dead_letters(redis_client, "q", ids)
    calls = calls_during(redis_client, lambda: drop_dead_letters(redis_client, NAMESPACE, "q", ids))
    assert calls.get("zrem") == calls.get("hdel") == 12  # DROP_CHUNK ids per command
    assert not redis_client.exists(*dead_letter_keys(NAMESPACE, "q"))


def test_dropping_all_unlinks_both_layouts(redis_client: redis.Redis) -> None:
    store_dead_letters(redis_client, "q", [make_job().id for _ in range(3)])
    store_dead_letters(redis_client, "q", [make_job().id for _ in range(2)], old=True)
    store_dead_letters(redis_client, "other", [make_job().id])
    calls = calls_during(redis_client, lambda: drop_dead_letters(redis_client, NAMESPACE, "q"))
    assert not WHOLE & set(calls) and "del" not in calls
    assert not redis_client.exists(*dead_letter_keys(NAMESPACE, "q"), *old_dead_letter_keys(NAMESPACE, "q"))
    assert redis_client.zcard(dead_letter_keys(NAMESPACE, "other")[0]) == 1


def test_a_nack_files_the_dead_letter_under_its_job_id(redis_url: str, redis_client: redis.Redis) -> None:
    # Given 20,000 dead letters already, and a message a worker fetched (one delayed too)
    store_dead_letters(redis_client, "default", [make_job().id for _ in range(20_000)])
    publisher = build_broker(redis_url)
    job, delayed = make_job(), make_job()
    sent = publisher.enqueue(message_for(job))
    late = publisher.enqueue(message_for(delayed), delay=60_000)
    broker = worker_broker(redis_url, "nacker")
    [body] = broker.fetch_banded("default", 10) or []
    assert body is not None and Message.decode(body).message_id == job.id
    [late_body] = broker.do_fetch("default.DQ", 10)
    # When the worker nacks them
    calls = calls_during(redis_client, lambda: broker.do_nack("default", sent.options["redis_message_id"], job.id))
    broker.do_nack("default.DQ", late.options["redis_message_id"], delayed.id)
    # Then each is a dead letter of the queue under its job id, with its body, out of its queue
    zset, bodies = dead_letter_keys(NAMESPACE, "default")
    assert redis_client.hget(bodies, job.id) == body and redis_client.zscore(zset, job.id) is not None
    assert redis_client.hget(bodies, delayed.id) == late_body
    assert not redis_client.hlen("dramatiq:default.msgs") and not redis_client.hlen("dramatiq:default.DQ.msgs")
    assert not redis_client.exists(broker.ack_sets.key("default"), broker.ack_sets.key("default.DQ"))
    # and the nack's work did not grow with the 20,000 there: one command of each kind
    assert not WHOLE & set(calls)
    assert all(calls.get(name) == 1 for name in ("srem", "hget", "zadd", "hset", "hdel")), calls
    # A message no longer in the ack set (acked or requeued meanwhile) is not moved
    assert broker.do_nack("default", sent.options["redis_message_id"], job.id) == 0


def test_old_dead_letters_move_under_their_job_ids_in_bounded_steps(redis_client: redis.Redis) -> None:
    # Given 3,000 dead letters of Dramatiq's layout: most of jobs still dead, some requeued or pruned
    # since, one body that does not decode, and a job dead-lettered again in the new layout meanwhile
    ids = [make_job().id for _ in range(3_000)]
    redis_ids = store_dead_letters(redis_client, "q", ids, old=True)
    gone = set(ids[::7])
    old_zset, old_bodies = old_dead_letter_keys(NAMESPACE, "q")
    redis_client.zadd(old_zset, {"garbage": 5})
    redis_client.hset(old_bodies, "garbage", b"\xff not a message")
    zset, bodies = dead_letter_keys(NAMESPACE, "q")
    redis_client.zadd(zset, {ids[1]: 99_999})
    redis_client.hset(bodies, ids[1], b"newer")
    asked: list[int] = []

    def still_dead(job_ids: list[str]) -> set[str]:
        asked.append(len(job_ids))
        return set(job_ids) - gone

    moving = OldDeadLetters(redis_client, NAMESPACE, "q", still_dead=still_dead, count_per_call=200)
    # When it moves them 1,000 at a time
    steps, finished = [], False
    while not finished:
        read, finished = moving.step(1_000)
        steps.append(read)
        assert len(steps) < 20
    # Then each step read about its budget (a scan call may overshoot by a little), the store was
    # asked about a scan call's jobs at a time, and every entry was read once
    assert len(steps) >= 3 and all(read <= 1_000 + 2 * 200 for read in steps), steps
    assert sum(steps) == 3_001 and max(asked) <= 2 * 200
    # and the old keys are gone; the dead jobs' letters are under their ids with their times
    assert not redis_client.exists(old_zset, old_bodies)
    kept = set(ids) - gone
    assert {key.decode() for key in redis_client.hkeys(bodies)} == kept | {"garbage"}
    assert redis_client.zcard(zset) == len(kept) + 1
    assert redis_client.zscore(zset, ids[2]) == 1002 and redis_client.zscore(zset, "garbage") == 5
    assert Message.decode(redis_client.hget(bodies, ids[2])).message_id == ids[2]  # type: ignore[arg-type]
    # and the newer dead letter of a job was kept, not overwritten by its old one
    assert redis_client.hget(bodies, ids[1]) == b"newer" and redis_client.zscore(zset, ids[1]) == 99_999
    assert redis_ids[ids[0]] == f"r-{ids[0]}"


def test_moving_old_dead_letters_of_an_empty_queue_finishes_at_once(redis_client: redis.Redis) -> None:
    moving = OldDeadLetters(redis_client, NAMESPACE, "none", still_dead=lambda ids: set(ids))
    assert moving.step(1_000) == (0, True)


def test_old_layout_body_without_a_job_id_is_kept_under_its_redis_id(redis_client: redis.Redis) -> None:
    old_zset, old_bodies = old_dead_letter_keys(NAMESPACE, "q")
    redis_client.zadd(old_zset, {"r-1": 1})
    redis_client.hset(old_bodies, "r-1", json.dumps({"no": "id"}))
    moving = OldDeadLetters(redis_client, NAMESPACE, "q", still_dead=lambda ids: set())
    assert moving.step(10) == (1, True)
    assert redis_client.hkeys(dead_letter_keys(NAMESPACE, "q")[1]) == [b"r-1"]
