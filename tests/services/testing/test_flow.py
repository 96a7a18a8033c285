"""The test mode's flow twins: the same answers as the Redis scripts, on the clock they are given."""

from __future__ import annotations

from services.testing.flow import MemoryRateBuckets, MemorySlots
from shared.flow.limits import parse_rate
from shared.flow.slots import Bucket, Waiting


def test_slots_refuse_past_the_limit_and_send_a_waiter_back_when_one_is_given_back() -> None:
    sent: list[bytes] = []
    slots = MemorySlots(sent.append)
    bucket = Bucket("task", "default", 1)
    # Given the one slot taken
    assert slots.acquire(bucket, owner="w", redis_message_id="r1") == 1
    # Then another job is refused, or waits when it asks to
    assert slots.acquire(bucket, owner="w", redis_message_id="r2") == -1
    assert slots.acquire(bucket, owner="w", redis_message_id="r2", waiting=Waiting("r2-copy", b"body")) == 0
    assert slots.waiting("task") == 1 and sent == []
    # When the slot is given back, the waiter goes back to the broker
    assert slots.release(bucket, holder="w|r1", owner="w") == 1
    assert sent == [b"body"] and slots.waiting("task") == 0 and slots.holders("task") == []


def test_rate_tokens_are_spaced_one_interval_apart_and_reserved_at_most_so_far_ahead() -> None:
    now = [1_000_000]
    buckets = MemoryRateBuckets(lambda: now[0], max_reserve_s=60)
    rate = parse_rate("2/m")  # one token every 30 s
    first, second, third = (buckets.take("b", rate) for _ in range(3))
    assert (first.now, second.wait_ms, third.wait_ms) == (True, 30_000, 60_000)
    # A fourth would wait 90 s, past the 60 s it may be reserved ahead: none is reserved
    fourth = buckets.take("b", rate)
    assert not fourth.reserved and fourth.wait_ms == 90_000
    # Once the clock moves past the reservations, a token is free at once again
    now[0] += 120_000
    assert buckets.take("b", rate).now
