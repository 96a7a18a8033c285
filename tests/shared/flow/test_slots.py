"""Concurrency slots' scripts against a real Redis: the limit holds, waiters wait in Redis and come back."""

from __future__ import annotations

import time

import pytest
import redis

from shared.broker.bands import band_key, new_redis_id
from shared.broker.orphans import requeue_worker
from shared.broker.waking import wake_key
from shared.flow.slots import WAITING_BUCKETS, Bucket, ConcurrencySlots, Waiting, held_key, holder_name

NS = "dramatiq"
QUEUE = f"{NS}:flow"
BUCKET = Bucket("flow.capped", "flow", 2)


def copy(redis_id: str) -> Waiting:
    """The copy of a refused message that waits (its own id, its body)."""
    return Waiting(f"{redis_id}-copy", b'{"copy": "%s"}' % redis_id.encode())


def wait(slots: ConcurrencySlots, owner: str, redis_id: str) -> int:
    return slots.acquire(BUCKET, owner=owner, redis_message_id=redis_id, waiting=copy(redis_id))


@pytest.fixture
def slots(redis_client: redis.Redis) -> ConcurrencySlots:
    return ConcurrencySlots(redis_client, namespace=NS, ttl_s=30)


def test_slots_are_taken_up_to_the_limit_and_no_further(slots: ConcurrencySlots) -> None:
    taken = [slots.acquire(BUCKET, owner="w1", redis_message_id=f"m{i}") for i in range(3)]

    assert taken == [1, 1, -1]
    assert sorted(slots.holders(BUCKET.name)) == [holder_name("w1", "m0"), holder_name("w1", "m1")]


def test_a_refused_message_waits_as_a_copy_of_its_own(slots: ConcurrencySlots, redis_client: redis.Redis) -> None:
    # Given: both slots taken
    for redis_id in ("m0", "m1"):
        assert slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id) == 1

    # When: a third asks to wait
    got = wait(slots, "w1", "m2")

    # Then: its copy waits, its body in the queue's message hash (where the reconcile looks)
    assert got == 0
    assert redis_client.lrange(f"jobrelay:flow:wait:{BUCKET.name}", 0, -1) == [b"m2-copy"]
    assert redis_client.hget(f"{QUEUE}.msgs", "m2-copy") == b'{"copy": "m2"}'
    assert redis_client.sismember(WAITING_BUCKETS, BUCKET.descriptor)


def test_a_release_sends_a_waiter_to_the_front_of_its_queue_with_a_wake_up(
    slots: ConcurrencySlots, redis_client: redis.Redis
) -> None:
    for redis_id in ("m0", "m1"):
        slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id)
    for redis_id in ("m2", "m3"):
        wait(slots, "w1", redis_id)
    redis_client.rpush(QUEUE, "other")

    moved = slots.release(BUCKET, holder=holder_name("w1", "m0"), owner="w1")

    assert moved == 1
    assert redis_client.lrange(QUEUE, 0, -1) == [b"m2-copy", b"other"]
    assert redis_client.llen(wake_key("flow")) == 1
    assert slots.waiting(BUCKET.name) == 1
    assert not redis_client.hexists(held_key("w1"), holder_name("w1", "m0"))


def test_the_last_waiter_gone_the_bucket_leaves_the_waiting_set(
    slots: ConcurrencySlots, redis_client: redis.Redis
) -> None:
    for redis_id in ("m0", "m1"):
        slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id)
    wait(slots, "w1", "m2")

    slots.release(BUCKET, holder=holder_name("w1", "m0"), owner="w1")

    assert not redis_client.sismember(WAITING_BUCKETS, BUCKET.descriptor)


def test_a_waiter_whose_message_was_deleted_meanwhile_is_dropped(
    slots: ConcurrencySlots, redis_client: redis.Redis
) -> None:
    for redis_id in ("m0", "m1"):
        slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id)
    wait(slots, "w1", "m2")
    redis_client.hdel(f"{QUEUE}.msgs", "m2-copy")  # purged

    assert slots.release(BUCKET, holder=holder_name("w1", "m0"), owner="w1") == 0
    assert redis_client.llen(QUEUE) == 0


def test_without_a_copy_to_wait_a_refusal_changes_nothing(slots: ConcurrencySlots, redis_client: redis.Redis) -> None:
    for redis_id in ("m0", "m1"):
        slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id)

    assert slots.acquire(BUCKET, owner="w1", redis_message_id="m2") == -1
    assert slots.waiting(BUCKET.name) == 0
    assert not redis_client.exists(f"{QUEUE}.msgs")


def test_a_dead_workers_slots_are_given_back_at_once_and_its_waiters_sent(
    slots: ConcurrencySlots, redis_client: redis.Redis
) -> None:
    for redis_id in ("m0", "m1"):
        slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id)
    wait(slots, "w2", "m2")

    assert slots.release_owner("w1") == 2

    assert slots.holders(BUCKET.name) == []
    assert redis_client.lrange(QUEUE, 0, -1) == [b"m2-copy"]
    assert not redis_client.exists(held_key("w1"))


def test_expired_slots_free_up_and_the_pump_sends_their_waiters(redis_client: redis.Redis) -> None:
    short = ConcurrencySlots(redis_client, namespace=NS, ttl_s=0.2)
    for redis_id in ("m0", "m1"):
        short.acquire(BUCKET, owner="w1", redis_message_id=redis_id)
    assert wait(short, "w1", "m2") == 0

    deadline = time.monotonic() + 10
    moved = 0
    while moved == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        moved = short.pump()

    assert moved == 1
    assert redis_client.lrange(QUEUE, 0, -1) == [b"m2-copy"]


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


def test_the_crash_recovery_of_a_worker_gives_its_slots_back(
    slots: ConcurrencySlots, redis_client: redis.Redis
) -> None:
    """``requeue_worker`` (the supervisor's and the scheduler's recovery of a dead worker id) frees its slots."""
    for redis_id in ("m0", "m1"):
        slots.acquire(BUCKET, owner="dead", redis_message_id=redis_id)
    wait(slots, "alive", "m2")

    requeue_worker(redis_client, "dead")

    assert slots.holders(BUCKET.name) == []
    assert redis_client.lrange(QUEUE, 0, -1) == [b"m2-copy"]


def test_a_waiter_of_a_higher_priority_goes_back_to_its_own_band(
    slots: ConcurrencySlots, redis_client: redis.Redis
) -> None:
    # Given both slots taken and a priority 7 copy waiting (its Redis id names its band)
    for redis_id in ("m0", "m1"):
        assert slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id) == 1
    waiting = Waiting(new_redis_id(7), b'{"copy": "m2"}')
    assert slots.acquire(BUCKET, owner="w1", redis_message_id="m2", waiting=waiting) == 0
    # When a slot frees
    assert slots.release(BUCKET, holder=holder_name("w1", "m0"), owner="w1") == 1
    # Then the copy waits in band 7's list, not priority 0's
    assert redis_client.lrange(band_key(QUEUE, 7), 0, -1) == [waiting.redis_message_id.encode()]
    assert redis_client.llen(QUEUE) == 0
