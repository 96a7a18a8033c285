"""Concurrency slots' scripts against a real Redis: the limit holds, waiters wait in Redis and come back."""

from __future__ import annotations

import time

import pytest
import redis

from shared.broker.waking import wake_key
from shared.flow.slots import WAITING_BUCKETS, Bucket, ConcurrencySlots, held_key, holder_name

NS = "dramatiq"
QUEUE = f"{NS}:flow"
BUCKET = Bucket("flow.capped", "flow", 2)


def ack_set(owner: str) -> str:
    return f"{NS}:__acks__.{owner}.flow"


def fetched(client: redis.Redis, owner: str, *redis_ids: str) -> None:
    """As a worker's fetch leaves them: bodies in the message hash, ids in the worker's ack set."""
    for redis_id in redis_ids:
        client.hset(f"{QUEUE}.msgs", redis_id, b"{}")
        client.sadd(ack_set(owner), redis_id)


@pytest.fixture
def slots(redis_client: redis.Redis) -> ConcurrencySlots:
    return ConcurrencySlots(redis_client, namespace=NS, ttl_s=30)


def test_slots_are_taken_up_to_the_limit_and_no_further(slots: ConcurrencySlots) -> None:
    taken = [slots.acquire(BUCKET, owner="w1", redis_message_id=f"m{i}") for i in range(3)]

    assert taken == [1, 1, -1]
    assert sorted(slots.holders(BUCKET.name)) == [holder_name("w1", "m0"), holder_name("w1", "m1")]


def test_a_refused_message_waits_in_redis_out_of_the_workers_ack_set(
    slots: ConcurrencySlots, redis_client: redis.Redis
) -> None:
    # Given: both slots taken
    fetched(redis_client, "w1", "m0", "m1", "m2")
    for redis_id in ("m0", "m1"):
        assert slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id) == 1

    # When: a third asks to wait
    got = slots.acquire(BUCKET, owner="w1", redis_message_id="m2", ack_set=ack_set("w1"), wait=True)

    # Then: it waits; its ack (after the skip) finds nothing, its body stays for the reconcile
    assert got == 0
    assert slots.waiting(BUCKET.name) == 1
    assert not redis_client.sismember(ack_set("w1"), "m2")
    assert redis_client.hexists(f"{QUEUE}.msgs", "m2")
    assert redis_client.sismember(WAITING_BUCKETS, BUCKET.descriptor)


def test_a_release_sends_a_waiter_to_the_front_of_its_queue_with_a_wake_up(
    slots: ConcurrencySlots, redis_client: redis.Redis
) -> None:
    fetched(redis_client, "w1", "m0", "m1", "m2", "m3")
    for redis_id in ("m0", "m1"):
        slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id)
    for redis_id in ("m2", "m3"):
        slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id, ack_set=ack_set("w1"), wait=True)
    redis_client.rpush(QUEUE, "other")

    moved = slots.release(BUCKET, holder=holder_name("w1", "m0"), owner="w1")

    assert moved == 1
    assert redis_client.lrange(QUEUE, 0, -1) == [b"m2", b"other"]
    assert redis_client.llen(wake_key("flow")) == 1
    assert slots.waiting(BUCKET.name) == 1
    assert not redis_client.hexists(held_key("w1"), holder_name("w1", "m0"))


def test_the_last_waiter_gone_the_bucket_leaves_the_waiting_set(
    slots: ConcurrencySlots, redis_client: redis.Redis
) -> None:
    fetched(redis_client, "w1", "m0", "m1", "m2")
    for redis_id in ("m0", "m1"):
        slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id)
    slots.acquire(BUCKET, owner="w1", redis_message_id="m2", ack_set=ack_set("w1"), wait=True)

    slots.release(BUCKET, holder=holder_name("w1", "m0"), owner="w1")

    assert not redis_client.sismember(WAITING_BUCKETS, BUCKET.descriptor)


def test_a_waiter_whose_message_was_deleted_meanwhile_is_dropped(
    slots: ConcurrencySlots, redis_client: redis.Redis
) -> None:
    fetched(redis_client, "w1", "m0", "m1", "m2")
    for redis_id in ("m0", "m1"):
        slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id)
    slots.acquire(BUCKET, owner="w1", redis_message_id="m2", ack_set=ack_set("w1"), wait=True)
    redis_client.hdel(f"{QUEUE}.msgs", "m2")  # purged

    assert slots.release(BUCKET, holder=holder_name("w1", "m0"), owner="w1") == 0
    assert redis_client.llen(QUEUE) == 0


def test_a_message_no_longer_in_the_ack_set_is_not_made_to_wait(
    slots: ConcurrencySlots, redis_client: redis.Redis
) -> None:
    """Put back by a consumer's reconnect meanwhile: it is in its queue, not on the waiting list too."""
    for redis_id in ("m0", "m1"):
        slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id)

    got = slots.acquire(BUCKET, owner="w1", redis_message_id="gone", ack_set=ack_set("w1"), wait=True)

    assert got == -1
    assert slots.waiting(BUCKET.name) == 0


def test_a_dead_workers_slots_are_given_back_at_once_and_its_waiters_sent(
    slots: ConcurrencySlots, redis_client: redis.Redis
) -> None:
    fetched(redis_client, "w2", "m2")
    for redis_id in ("m0", "m1"):
        slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id)
    slots.acquire(BUCKET, owner="w2", redis_message_id="m2", ack_set=ack_set("w2"), wait=True)

    assert slots.release_owner("w1") == 2

    assert slots.holders(BUCKET.name) == []
    assert redis_client.lrange(QUEUE, 0, -1) == [b"m2"]
    assert not redis_client.exists(held_key("w1"))


def test_expired_slots_free_up_and_the_pump_sends_their_waiters(redis_client: redis.Redis) -> None:
    short = ConcurrencySlots(redis_client, namespace=NS, ttl_s=0.2)
    fetched(redis_client, "w1", "m2")
    for redis_id in ("m0", "m1"):
        short.acquire(BUCKET, owner="w1", redis_message_id=redis_id)
    short.acquire(BUCKET, owner="w1", redis_message_id="m2", ack_set=ack_set("w1"), wait=True)

    deadline = time.monotonic() + 10
    moved = 0
    while moved == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        moved = short.pump()

    assert moved == 1
    assert redis_client.lrange(QUEUE, 0, -1) == [b"m2"]


def test_renewed_slots_outlive_their_first_expiry(redis_client: redis.Redis) -> None:
    short = ConcurrencySlots(redis_client, namespace=NS, ttl_s=0.5)
    short.acquire(BUCKET, owner="w1", redis_message_id="m0")
    holder = holder_name("w1", "m0")

    for _ in range(6):
        time.sleep(0.2)
        short.renew([(BUCKET, holder)])

    assert short.holders(BUCKET.name) == [holder]
    assert short.acquire(BUCKET, owner="w1", redis_message_id="m1") == 1
    assert short.acquire(BUCKET, owner="w1", redis_message_id="m2") == -1


def test_buckets_are_separate(slots: ConcurrencySlots) -> None:
    one = Bucket('flow.per_key:"a"', "flow", 1)
    other = Bucket('flow.per_key:"b"', "flow", 1)

    assert slots.acquire(one, owner="w1", redis_message_id="m0") == 1
    assert slots.acquire(other, owner="w1", redis_message_id="m1") == 1
    assert slots.acquire(one, owner="w1", redis_message_id="m2") == -1
