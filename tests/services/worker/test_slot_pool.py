"""The slots a worker process keeps between jobs: reused while nobody waits, given back as soon as someone does."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from services.worker.slot_pool import HeldSlot, SlotPool
from shared.flow.slots import Bucket, ConcurrencySlots, Waiting, holder_name, waiting_key

BUCKET = Bucket("flow.capped", "flow", 1)


@pytest.fixture
def slots(redis_client: redis.Redis) -> ConcurrencySlots:
    return ConcurrencySlots(redis_client, namespace="dramatiq", ttl_s=30)


@pytest.fixture
def pool(slots: ConcurrencySlots) -> Iterator[SlotPool]:
    pool = SlotPool(slots, owner="w1", keep=4, check_s=0.01, linger_s=0.3)
    pool.start()
    yield pool
    pool.stop()
    pool.join(timeout=5)


def held(slots: ConcurrencySlots, redis_id: str) -> HeldSlot:
    assert slots.acquire(BUCKET, owner="w1", redis_message_id=redis_id) == 1
    return HeldSlot(BUCKET, holder_name("w1", redis_id))


def wait_for(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_kept_slot_is_taken_again_without_giving_it_up(pool: SlotPool, slots: ConcurrencySlots) -> None:
    slot = held(slots, "m0")

    assert pool.put(slot)

    assert pool.take(BUCKET) == slot
    assert slots.holders(BUCKET.name) == [slot.holder]
    assert pool.take(BUCKET) is None


def test_kept_slots_go_back_once_idle_past_the_linger(pool: SlotPool, slots: ConcurrencySlots) -> None:
    pool.put(held(slots, "m0"))

    wait_for(lambda: slots.holders(BUCKET.name) == [])
    assert pool.take(BUCKET) is None


def test_kept_slots_go_back_and_none_is_kept_while_jobs_wait(
    pool: SlotPool, slots: ConcurrencySlots, redis_client: redis.Redis
) -> None:
    # Given: a kept slot, and a job of another process waiting for the bucket
    slot = held(slots, "m0")
    assert slots.acquire(BUCKET, owner="w2", redis_message_id="m1", waiting=Waiting("m1-copy", b"{}")) == 0
    pool.put(slot)

    # Then: the kept slot goes back and the waiter to its queue, well before the linger
    wait_for(lambda: redis_client.lrange("dramatiq:flow", 0, -1) == [b"m1-copy"], timeout_s=0.25)
    assert redis_client.llen(waiting_key(BUCKET.name)) == 0


def test_a_job_made_to_wait_here_sends_the_kept_slots_back_at_once(pool: SlotPool, slots: ConcurrencySlots) -> None:
    pool.put(held(slots, "m0"))

    pool.waited(BUCKET)

    wait_for(lambda: slots.holders(BUCKET.name) == [], timeout_s=0.25)
    assert not pool.put(held(slots, "m1")) or pool.take(BUCKET) is not None


def test_a_pool_whose_thread_does_not_run_keeps_nothing(slots: ConcurrencySlots) -> None:
    idle = SlotPool(slots, owner="w1", keep=4)

    assert not idle.put(held(slots, "m0"))


def test_stopping_gives_every_kept_slot_back(pool: SlotPool, slots: ConcurrencySlots) -> None:
    pool.put(held(slots, "m0"))

    pool.stop()

    assert slots.holders(BUCKET.name) == []
