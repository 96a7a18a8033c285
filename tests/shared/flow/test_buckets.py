"""The rate bucket's script against a real Redis: one start per interval, later ones reserved in order."""

from __future__ import annotations

import itertools

import redis

from shared.flow.buckets import RateBuckets
from shared.flow.limits import parse_rate


def test_the_first_start_is_now_and_the_next_are_reserved_one_interval_apart(redis_client: redis.Redis) -> None:
    buckets = RateBuckets(redis_client)
    rate = parse_rate("5/s")

    tokens = [buckets.take("vendor.call", rate) for _ in range(4)]

    assert tokens[0].now
    assert all(token.reserved for token in tokens)
    starts = [token.at_ms for token in tokens]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(190 <= gap <= 210 for gap in gaps), gaps


def test_buckets_of_different_keys_do_not_share_tokens(redis_client: redis.Redis) -> None:
    buckets = RateBuckets(redis_client)
    rate = parse_rate("1/m")

    assert buckets.take('vendor.call:"a"', rate).now
    assert buckets.take('vendor.call:"b"', rate).now
    assert not buckets.take('vendor.call:"a"', rate).now


def test_no_token_is_reserved_beyond_the_longest_reservation(redis_client: redis.Redis) -> None:
    buckets = RateBuckets(redis_client, max_reserve_s=90)
    rate = parse_rate("1/m")

    first, second, third = (buckets.take("vendor.call", rate) for _ in range(3))

    assert first.now and second.reserved and 59_000 <= second.wait_ms <= 60_000
    assert not third.reserved and third.wait_ms > 90_000
    # The refused one reserved nothing: the next is offered the same time again.
    assert buckets.take("vendor.call", rate).wait_ms >= third.wait_ms - 100


def test_the_bucket_key_expires_once_idle(redis_client: redis.Redis) -> None:
    buckets = RateBuckets(redis_client)

    buckets.take("vendor.call", parse_rate("10/s"))

    ttl_ms = redis_client.pttl("jobrelay:flow:rate:vendor.call")
    assert 0 < ttl_ms <= 1100
