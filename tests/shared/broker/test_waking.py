"""Enqueues leave wake-up tokens for idle consumers, bounded, and survive Redis losing its scripts."""

from __future__ import annotations

import dramatiq
import redis

from shared.broker.publishing import build_broker
from shared.broker.waking import WAKE_TOKENS, wake_key


def message(queue: str = "default") -> dramatiq.Message[object]:
    return dramatiq.Message(queue_name=queue, actor_name="a.b", args=(), kwargs={}, options={})


def test_enqueue_leaves_a_bounded_number_of_wake_tokens(redis_url: str, redis_client: redis.Redis) -> None:
    broker = build_broker(redis_url)
    broker.enqueue(message())
    assert redis_client.llen(wake_key("default")) == 1
    for _ in range(WAKE_TOKENS + 10):
        broker.enqueue(message())
    assert redis_client.llen(wake_key("default")) == WAKE_TOKENS
    assert redis_client.llen("dramatiq:default") == WAKE_TOKENS + 11


def test_enqueue_survives_redis_losing_its_scripts(redis_url: str, redis_client: redis.Redis) -> None:
    # Given a broker that has enqueued once (so it calls the dispatch script by digest)
    broker = build_broker(redis_url)
    broker.enqueue_many([(message(), None)])
    # When Redis forgets its scripts (as after a restart)
    redis_client.script_flush()
    # Then the next enqueues load it again and land once each
    broker.enqueue_many([(message(), None), (message(), None)])
    broker.enqueue(message())
    assert redis_client.llen("dramatiq:default") == 4


def test_delayed_messages_wake_nobody(redis_url: str, redis_client: redis.Redis) -> None:
    build_broker(redis_url).enqueue(message(), delay=60_000)
    assert redis_client.llen(wake_key("default.DQ")) == 0 and redis_client.llen(wake_key("default")) == 0
