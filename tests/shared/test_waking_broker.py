"""Idle workers wake on enqueue: the wake-up tokens and the consumer that waits for them."""

from __future__ import annotations

import threading
import time

import dramatiq
import redis

from shared.broker import build_broker
from shared.waking_broker import WAKE_TOKENS, wake_key


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


def test_an_idle_consumer_waits_for_a_token_then_fetches(redis_url: str, redis_client: redis.Redis) -> None:
    broker = build_broker(redis_url)
    consumer = broker.consume("default", prefetch=4, timeout=100)
    # Given an idle consumer blocked on the empty queue
    results: list[object] = []
    waiting = threading.Thread(target=lambda: results.append(next(consumer)))
    waiting.start()
    deadline = time.monotonic() + 5
    while not any(c.get("cmd") == "blpop" for c in redis_client.client_list()):
        assert time.monotonic() < deadline, "the consumer never blocked"
        time.sleep(0.01)
    # When a message is enqueued
    sent = broker.enqueue(message())
    waiting.join(timeout=5)
    # Then the consumer woke (taking the token) and the next call returns the message
    assert not waiting.is_alive() and results == [None]
    assert redis_client.llen(wake_key("default")) == 0
    received = next(consumer)
    assert received is not None and received.message_id == sent.message_id
    consumer.ack(received)
