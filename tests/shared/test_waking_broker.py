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


def test_a_new_consumer_puts_back_what_the_old_one_dropped_and_leaves_what_is_in_hand(
    redis_url: str, redis_client: redis.Redis
) -> None:
    broker = build_broker(redis_url)
    acks = f"dramatiq:__acks__.{broker.broker_id}.default"
    sent = [broker.enqueue(message()) for _ in range(3)]
    # Given a consumer that handed one message to a worker thread and holds the next prefetched
    first = broker.consume("default", prefetch=2, timeout=100)
    held = next(first)
    assert held is not None and held.message_id == sent[0].message_id
    # and a fetch whose reply a dying connection lost (the script moved the message into the ack set)
    broker.do_fetch("default", 1)
    assert redis_client.scard(acks) == 3 and redis_client.llen("dramatiq:default") == 0
    # When Dramatiq replaces the consumer (as after a connection error)
    second = broker.consume("default", prefetch=2, timeout=100)
    received = [next(second), next(second)]
    # Then the two dropped messages come again, and the one in hand stays with its thread
    assert sorted(m.message_id for m in received if m is not None) == sorted(m.message_id for m in sent[1:])
    assert redis_client.llen("dramatiq:default") == 0
    for proxy in (held, *received):
        assert proxy is not None
        second.ack(proxy)
    assert redis_client.scard(acks) == 0 and broker.in_hand("default") == set()


def test_nacked_and_requeued_messages_leave_the_hand(redis_url: str) -> None:
    broker = build_broker(redis_url)
    broker.enqueue(message())
    broker.enqueue(message())
    consumer = broker.consume("default", prefetch=2, timeout=100)
    nacked, requeued = next(consumer), next(consumer)
    assert nacked is not None and requeued is not None
    assert len(broker.in_hand("default")) == 2
    consumer.nack(nacked)
    consumer.requeue([requeued])
    assert broker.in_hand("default") == set()
